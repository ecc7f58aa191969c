"""Run-time MAT-Steer through pyvene: a padding-aware, batched, per-token gated intervention.

``f(a) = a + Σ_t m_t · G_t(a) · θ_t`` (then, by default, rescaled to ``‖a‖``) is applied at one site to every
non-pad position of every row, in a plain forward and in ``generate`` (the prompt pass and every decoding step).

Main entry point::

    with steer(model, steerer, site=Site(14, "attn_heads"), multipliers={"toxicity": 2.0}) as s:
        out = s.generate(**tokenizer(prompts, return_tensors="pt", padding=True), max_new_tokens=32)
        s.settings.force["toxicity"] = False      # takes effect on the next call, no rebuild
        logits = s(**batch).logits

The reference README flow also works with our names (see :class:`MATIntervener`, :func:`create_mat_pyvene_config`).

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

import functools
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ._pyvene import import_pyvene
from .errors import ConfigError, MatSteerError
from .sites import COMPONENTS, ResolvedSite, Site
from .steerer import Steerer

pv = import_pyvene()  # without its "nnsight is not detected" notice

Positions = Literal["all", "prompt", "generated", "last"]
POSITIONS: tuple[str, ...] = ("all", "prompt", "generated", "last")
Phase = Literal["prompt", "generated"]

# Keys of a model call that are per-row tensors (they go into pyvene's ``base`` dict; the first one sets the batch size).
_INPUT_KEYS = ("input_ids", "inputs_embeds", "attention_mask", "position_ids", "token_type_ids")


# ----------------------------------------------------------------------------------------------------------------
# Settings


@dataclass
class SteerSettings:
    """The run-time knobs; mutate them between calls (no rebuild needed).

    multipliers: per-attribute ``m_t`` (missing names mean 1.0); global_multiplier multiplies all of them.
    force: attribute name -> True (gate forced to 1), False (forced to 0), a value in [0, 1], or None (learned gate).
    preserve_norm: rescale each edited activation to its original L2 norm.
    positions: ``all`` non-pad positions; ``prompt`` only in forward calls with an empty KV cache (the prompt pass);
    ``generated`` only in calls with a filled cache (decode steps); ``last`` only the last non-pad position of each
    row in each forward call.
    """

    multipliers: dict[str, float] = field(default_factory=dict)
    global_multiplier: float = 1.0
    force: dict[str, bool | float | None] = field(default_factory=dict)
    preserve_norm: bool = True
    positions: str = "all"

    def fingerprint(self) -> tuple:
        """A hashable summary; the intervention rebuilds its cached tensors only when it changes."""
        return (
            tuple(sorted(self.multipliers.items())),
            self.global_multiplier,
            tuple(sorted(self.force.items())),
            bool(self.preserve_norm),
            self.positions,
        )


@dataclass(frozen=True)
class _Prepared:
    """Tensors derived from the settings, cached per (settings, device)."""

    key: tuple
    scale: torch.Tensor  # [T] float32
    forced: torch.Tensor | None  # [T] float32, NaN = learned gate
    inactive: bool  # every effective scale is 0: the intervention is the identity
    preserve_norm: bool
    positions: str


# ----------------------------------------------------------------------------------------------------------------
# Call context: what the intervention needs to know about the current forward call


@dataclass
class CallContext:
    """Filled by a forward pre-hook on the model before each forward call, cleared after the steered call.

    valid: ``[B, cur]`` bool, True at non-pad positions of the tokens fed in this call (None: no mask given).
    past_len: number of tokens already in the KV cache (0 in the prompt pass).
    """

    captured: bool = False
    valid: torch.Tensor | None = None
    past_len: int = 0

    def clear(self) -> None:
        self.captured, self.valid, self.past_len = False, None, 0

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """``register_forward_pre_hook(..., with_kwargs=True)`` callback: read the mask and the cache length."""
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None and args and isinstance(args[0], torch.Tensor):
            x = args[0]
        cur = int(x.shape[1]) if isinstance(x, torch.Tensor) and x.dim() >= 2 else None
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1 and isinstance(args[1], torch.Tensor):
            mask = args[1]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers >= 5.2x calls it `cache`
        past: int | None = None
        if cache is not None:
            if hasattr(cache, "get_seq_length"):
                past = int(cache.get_seq_length())
            elif isinstance(cache, (tuple, list)) and cache and isinstance(cache[0], (tuple, list)):
                past = int(cache[0][0].shape[-2])  # legacy tuple cache
        valid = None
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and cur is not None and mask.shape[1] >= cur:
            valid = mask[:, mask.shape[1] - cur :].bool()
            if past is None:
                past = int(mask.shape[1]) - cur
        self.captured, self.valid, self.past_len = True, valid, past or 0

    def lookup(self, batch: int, seq: int) -> tuple[torch.Tensor | None, Phase]:
        """Non-pad mask ``[B, seq]`` (or None = all positions) and the phase of the current call.

        Without a captured context (pyvene called directly, without :func:`steer`), every position counts as
        non-pad and a call with ``seq > 1`` counts as the prompt pass.
        """
        if not self.captured:
            return None, ("prompt" if seq > 1 else "generated")
        valid = self.valid
        if valid is not None and tuple(valid.shape) != (batch, seq):
            valid = None  # e.g. pyvene gathered a sub-selection of positions: the mask no longer lines up
        return valid, ("generated" if self.past_len > 0 else "prompt")


# ----------------------------------------------------------------------------------------------------------------
# Gate recording


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


# ----------------------------------------------------------------------------------------------------------------
# The intervention


class MatSteerIntervention(pv.SourcelessIntervention):
    """pyvene intervention that applies a :class:`~matsteer.steerer.Steerer` to ``[B, seq, d]`` activations.

    Every non-pad position of every row gets its own gates (the reference intervener edited only ``b[0, -1]``).
    Computes in float32 and returns the input dtype, so fp16/bf16 models work. When every effective scale is 0
    (multipliers 0 or gates forced off) it returns its input untouched, so logits are bit-identical to the base model.

    ``SourcelessIntervention`` (not ``TrainableIntervention``): pyvene 0.1.8 only calls setters without a source
    for interventions with ``is_source_constant``; train the :class:`Steerer` with :mod:`matsteer.train` instead.
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
        _install_generate_shim()

    def __str__(self) -> str:
        return f"MatSteerIntervention(attributes={self.steerer.attributes}, site={self.site})"

    @property
    def layer(self) -> int | None:
        return None if self.site is None else self.site.layer

    def prepare(self, device: torch.device | None = None) -> _Prepared:
        """Build (or reuse) the ``[T]`` scale/forced tensors for the current settings; raises ConfigError on bad ones."""
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
        scale = self.steerer.scale_vector(s.multipliers, s.global_multiplier)
        forced = self.steerer.forced_vector(s.force)
        # Decided on the host from the settings, so the hot path never syncs with the device.
        scale_list = scale.tolist()
        forced_list = forced.tolist() if forced is not None else [float("nan")] * len(scale_list)
        inactive = all(m == 0.0 or f == 0.0 for m, f in zip(scale_list, forced_list))
        p = _Prepared(
            key=key,
            scale=scale.to(device),
            forced=None if forced is None else forced.to(device),
            inactive=inactive,
            preserve_norm=bool(s.preserve_norm),
            positions=s.positions,
        )
        self._prepared, self._prepared_device = p, device
        return p

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
        valid, phase = self.context.lookup(batch, seq)
        select, none_selected = self._select(valid, phase, seq, p.positions, base.device)
        recording = self.recorder is not None and self.recorder.enabled
        if not recording and (p.inactive or none_selected):
            return base
        if p.inactive or none_selected:
            gates = self.steerer.gates(base)
            if p.forced is not None:
                gates = torch.where(torch.isnan(p.forced), gates, p.forced)
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


# ----------------------------------------------------------------------------------------------------------------
# pyvene model that leaves foreign hooks alone


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


def _split_inputs(inputs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split call kwargs into pyvene's ``base`` (per-row tensors, batch-defining key first) and the rest."""
    base = {k: inputs[k] for k in _INPUT_KEYS if k in inputs and inputs[k] is not None}
    rest = {k: v for k, v in inputs.items() if k not in base}
    if not base or not isinstance(next(iter(base.values())), torch.Tensor):
        raise ConfigError("Pass the model inputs as keyword tensors, e.g. input_ids=... and attention_mask=....")
    return base, rest


@contextmanager
def _context_hook(model: nn.Module, context: CallContext) -> Iterator[None]:
    """Register the call-context pre-hook on ``model`` for one steered call; always removed and cleared after."""
    handle = model.register_forward_pre_hook(context.pre_hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        context.clear()


def _snapshot_model_state(model: nn.Module) -> tuple[list[tuple[nn.Module, bool]], list[tuple[nn.Parameter, bool]]]:
    return [(m, m.training) for m in model.modules()], [(p, p.requires_grad) for p in model.parameters()]


def _restore_model_state(state: tuple[list[tuple[nn.Module, bool]], list[tuple[nn.Parameter, bool]]]) -> None:
    modules, params = state
    for m, training in modules:
        m.training = training
    for p, requires_grad in params:
        p.requires_grad_(requires_grad)


# ----------------------------------------------------------------------------------------------------------------
# The context manager


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

    def __call__(self, **inputs: Any) -> Any:
        """A steered forward call: ``inputs`` as for ``model(**inputs)``; returns the model's output."""
        pv_model = self._pv()
        base, rest = _split_inputs(inputs)
        # Everything goes in `base` (pyvene calls model(**base)): pyvene's own forward has `labels`, `use_cache`
        # and `return_dict` parameters that would otherwise swallow the model's arguments of those names.
        base.update(rest)
        with _context_hook(self.model, self.intervention.context):
            _, out = pv_model(base, unit_locations=None)
        return out

    forward = __call__

    def generate(self, input_ids: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """Steered ``model.generate``: the prompt pass and every decoding step; returns what ``generate`` returns."""
        pv_model = self._pv()
        if input_ids is not None:
            kwargs["input_ids"] = input_ids
        base, rest = _split_inputs(kwargs)
        if self.recorder is not None:
            self.recorder.clear()
        with _context_hook(self.model, self.intervention.context):
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
) -> Iterator[SteeringHandle]:
    """Steer ``model`` with ``steerer`` at ``site`` (default: ``steerer.site``) inside a ``with`` block.

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
            intervenable = handle.intervenable
            if intervenable is not None:
                intervenable._remove_forward_hooks()
            handle.intervenable = None
            handle.closed = True
        intervention.context.clear()
        _restore_model_state(state)


# ----------------------------------------------------------------------------------------------------------------
# The reference README flow, with our names


class MATIntervener(MatSteerIntervention):
    """The reference code's run-time intervener, by name: ``MATIntervener.load_from_checkpoint(path, multiplier)``.

    Unlike the reference (which edited only ``b[0, -1]``, the last position of batch row 0, in each forward call),
    this steers every token of every row, each with its own gates, and computes in float32 (fp16 models work).
    Use it with :func:`create_mat_pyvene_config` and ``pv.IntervenableModel(cfg, model).generate(**inputs, ...)``.
    Pad-awareness and the position policies need the call context: :func:`steer` provides it, and so does the
    ``generate(**inputs)`` call form; pyvene's own ``generate(base, ...)`` form steers all positions.
    """

    def __init__(
        self,
        steerer: Steerer,
        multiplier: float = 1.0,
        layer_norm_preserve: bool = True,
        *,
        site: Site | None = None,
        **kwargs: Any,
    ) -> None:
        settings = kwargs.pop("settings", None) or SteerSettings(
            global_multiplier=float(multiplier), preserve_norm=layer_norm_preserve
        )
        super().__init__(steerer, settings, site=site, **kwargs)

    @property
    def multiplier(self) -> float:
        return self.settings.global_multiplier

    @multiplier.setter
    def multiplier(self, value: float) -> None:
        self.settings.global_multiplier = float(value)

    @classmethod
    def load_from_checkpoint(cls, path: str | Path, multiplier: float = 1.0, **kwargs: Any) -> MATIntervener:
        """Load our steerer folder (site from its manifest) or a reference ``.pt`` checkpoint (site ``attn_heads``)."""
        path = Path(path)
        if path.is_dir():
            from .artifacts import load_steerer

            steerer, manifest = load_steerer(path)
            site = Site.from_dict(manifest["site"]) if "site" in manifest else None
        else:
            from .artifacts import import_reference_checkpoint

            steerer = import_reference_checkpoint(path)
            site = None  # the reference format has no layer; create_mat_pyvene_config supplies it (attn_heads)
        return cls(steerer, multiplier=multiplier, site=site, **kwargs)


_REFERENCE_PATHS = {
    "residual": "model.layers[{layer}].output",
    "attn_output": "model.layers[{layer}].self_attn.o_proj.output",
    "attn_heads": "model.layers[{layer}].self_attn.o_proj.input",
}


def create_mat_pyvene_config(
    layers: Sequence[int] | int,
    intervener: MatSteerIntervention,
    *,
    component: str | None = None,
    model: nn.Module | None = None,
) -> pv.IntervenableConfig:
    """pyvene config putting ``intervener`` at each of ``layers``.

    component: default the intervener's site component, else ``attn_heads`` (the reference's
    ``model.layers[L].self_attn.o_proj.input``). model: resolve module paths on it (needed for non-Llama layouts
    such as GPT-2); without it, Llama-style paths are used. Extra layers get siblings sharing settings and recorder.
    """
    layers = [layers] if isinstance(layers, int) else list(layers)
    if not layers:
        raise ConfigError("Pass at least one layer.")
    component = component or (intervener.site.component if intervener.site is not None else "attn_heads")
    if component not in COMPONENTS:
        raise ConfigError(f"Unknown site component {component!r}; choose one of {', '.join(COMPONENTS)}.")
    known = intervener.site.layer if intervener.site is not None else None
    if known is not None and any(layer != known for layer in layers):
        warnings.warn(
            f"This steerer was trained at layer {known}; steering layers {layers} applies it where it was not trained.",
            stacklevel=2,
        )
    reps = []
    for i, layer in enumerate(layers):
        site = Site(layer, component)
        iv = intervener if i == 0 else intervener.sibling(site)
        if i == 0:
            iv.site = site
        path = site.resolve(model).pyvene_component if model is not None else _REFERENCE_PATHS[component].format(layer=layer)
        reps.append({"component": path, "intervention": iv})
    _install_generate_shim()
    return pv.IntervenableConfig(reps)


def _install_generate_shim() -> None:
    """Let ``pv.IntervenableModel.generate(**inputs, **gen_kwargs)`` (the reference README call) work.

    pyvene 0.1.8's signature is ``generate(base, ...)``, so the README call raises ``TypeError: missing 'base'``.
    The shim only handles calls that would raise that error and whose model holds a :class:`MatSteerIntervention`;
    it gathers the input tensors into ``base`` and defaults to ``unit_locations=None, intervene_on_prompt=True``
    (every forward call). Every other call goes to pyvene unchanged. Idempotent.
    """
    cls = pv.IntervenableModel
    if getattr(cls.generate, "_matsteer_shim", False):
        return
    original = cls.generate

    @functools.wraps(original)
    def generate(self: Any, base: Any = None, *args: Any, **kwargs: Any) -> Any:
        mats = [iv for iv in self.interventions.values() if isinstance(iv, MatSteerIntervention)]
        if base is not None or args or not mats or not any(k in kwargs for k in ("input_ids", "inputs_embeds")):
            return original(self, base, *args, **kwargs)
        base, rest = _split_inputs(kwargs)
        rest.setdefault("unit_locations", None)
        rest.setdefault("intervene_on_prompt", True)
        contexts = {id(iv.context): iv.context for iv in mats}.values()
        # The plain class strips all model hooks when the call starts; keep ours alive for this call only.
        own = "_remove_forward_hooks" in self.__dict__
        if not own:
            object.__setattr__(self, "_remove_forward_hooks", lambda: None)
        handles = [self.model.register_forward_pre_hook(c.pre_hook, with_kwargs=True) for c in contexts]
        try:
            return original(self, base, **rest)
        finally:
            for h in handles:
                h.remove()
            for c in contexts:
                c.clear()
            if not own:
                del self.__dict__["_remove_forward_hooks"]
                self._remove_forward_hooks()  # what pyvene would have done at the end of the call

    generate._matsteer_shim = True  # type: ignore[attr-defined]
    cls.generate = generate
