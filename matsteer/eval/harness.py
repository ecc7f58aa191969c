"""Steered models in lm-evaluation-harness: the ``matsteer`` model class, unsteered-vs-steered runs, CLI helpers.

The model class (:func:`harness_model_class`, registered in lm-eval's model registry as ``matsteer``) is lm-eval's
``HFLM`` with every model call of ``loglikelihood``, ``loglikelihood_rolling`` and ``generate_until`` made through
:func:`matsteer.steering.session.steer` (site, gates, multipliers, forced gates, norm preservation), with the
first token and special tokens left unsteered unless ``steer_special`` (as :func:`matsteer.eval.scoring.score_mc`
does). Without ``steerer`` it is plain ``HFLM`` on the same model.

Positions (``positions=``) mean what they mean in matsteer's scorer, where the context is one forward pass and the
continuation a second one on its KV cache: ``prompt`` edits the context tokens only (the paper's query tokens),
``generated`` the continuation tokens only, ``all`` both, ``last`` the last context token. lm-eval scores
context + continuation in one pass, so the harness model builds the per-row mask of the positions that the
two-pass scorer would edit and edits exactly those (same log-likelihoods; tests/test_harness.py checks it).
``generate_until`` steers the prompt pass and the decoding steps as :meth:`SteeringHandle.generate` does.
``loglikelihood_rolling`` (perplexity tasks) scores the whole text as continuation, so ``positions=prompt`` leaves
it unsteered: use ``positions=all`` there.

lm-eval 0.4.x has no plugin entry points for models (its registry holds only what is registered in the running
process), so the ``lm_eval`` command cannot find ``matsteer`` by itself. Importing this module registers it (a lazy
placeholder: the ``HFLM`` subclass is built when lm-eval first asks for it), and ``python -m matsteer.eval.harness
ARGS`` is lm-eval's own command line after that import (``--model matsteer --model_args
pretrained=MODEL,steerer=DIR,multiplier=2,positions=prompt``). In Python, ``import matsteer.eval.harness`` before
``lm_eval.simple_evaluate(model="matsteer", ...)``.

lm-eval is an optional dependency (``pip install 'matsteer[lm-eval]'``): on import only its small registry module is
touched (nothing when it is missing), the rest inside the functions that need it, so that this module (and the CLI
that imports it) loads without it.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from matsteer.activations.models import DEFAULT_MODEL, DTYPE_CHOICES, load_model
from matsteer.activations.sites import Site
from matsteer.core.steerer import Steerer
from matsteer.errors import ConfigError, MatSteerError
from matsteer.eval.scoring import protect_special, protected_positions, special_token_ids
from matsteer.files import atomic_path, write_json
from matsteer.steering.call_context import CallContext
from matsteer.steering.intervention import POSITIONS
from matsteer.steering.session import SteeringHandle, steer
from matsteer.store.artifacts import check_compatible
from matsteer.store.hub import from_pretrained

#: The name the model class is registered under in lm-eval (``--model matsteer``).
HARNESS_MODEL = "matsteer"
#: The lm-eval versions this module is tested with (it relies on ``HFLM`` internals that change within 0.4.x).
LM_EVAL_REQUIREMENT = "lm-eval>=0.4.13,<0.5"
_HARNESS_TARGET = "matsteer.eval.harness:MatSteerLM"  # where lm-eval's registry finds the class (module __getattr__)
RESULTS_JSON = "harness.json"
RESULTS_MD = "harness.md"


def _import_lm_eval() -> Any:
    """lm-eval, or one clear error saying how to install it (it is an optional extra)."""
    try:
        # Lazy: an optional dependency that takes seconds to import. The submodules are used as attributes.
        import lm_eval
        import lm_eval.evaluator
        import lm_eval.models.huggingface
        import lm_eval.tasks  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"lm-evaluation-harness is not installed ({exc}). Install it with pip install 'matsteer[lm-eval]' "
            f"(or pip install '{LM_EVAL_REQUIREMENT}')."
        ) from exc
    return lm_eval


@dataclass
class HarnessSteering:
    """How the harness model steers (``--model_args`` of the ``matsteer`` model).

    multipliers: per-attribute ``m_t`` (``multiplier_toxicity=1.5``); global_multiplier: ``multiplier=2``.
    force: attribute -> forced gate (``force_toxicity=0``: off, ``1``: on, a value in [0, 1]); missing: learned.
    positions: ``all``, ``prompt``, ``generated`` or ``last`` (module docstring). steer_special: also edit the
    first token and special tokens.
    """

    multipliers: dict[str, float] = field(default_factory=dict)
    global_multiplier: float = 1.0
    force: dict[str, bool | float | None] = field(default_factory=dict)
    preserve_norm: bool = True
    positions: str = "all"
    steer_special: bool = False

    def check(self, steerer: Steerer) -> None:
        """Refuse unknown attributes, non-finite multipliers, bad forced gates and unknown positions now."""
        if self.positions not in POSITIONS:
            raise ConfigError(f"Unknown positions={self.positions!r}; choose one of {', '.join(POSITIONS)}.")
        steerer.scale_vector(self.multipliers, self.global_multiplier)
        steerer.forced_vector(self.force)


def _flag(value: Any, name: str) -> bool:
    """A boolean model argument as lm-eval parses it (``true``/``false`` arrive as bools, 0/1 as ints)."""
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"{name}={value!r} is not a boolean; pass {name}=true or {name}=false.")


def _number(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}={value!r} is not a number; pass e.g. {name}=1.5.") from exc


def steering_from_model_args(kwargs: dict[str, Any], *, multiplier: Any = 1.0, positions: str = "all",
                             preserve_norm: Any = True, steer_special: Any = False) -> HarnessSteering:
    """The steering settings of the ``matsteer`` model's arguments; pops ``multiplier_NAME`` / ``force_NAME`` keys
    from ``kwargs`` (what remains goes to ``HFLM``)."""
    per = {k[len("multiplier_"):]: _number(kwargs.pop(k), k) for k in [k for k in kwargs if k.startswith("multiplier_")]}
    force: dict[str, bool | float | None] = {}
    for key in [k for k in kwargs if k.startswith("force_")]:
        value = kwargs.pop(key)
        force[key[len("force_"):]] = None if value is None else _number(value, key)
    return HarnessSteering(multipliers=per, global_multiplier=_number(multiplier, "multiplier"), force=force,
                           preserve_norm=_flag(preserve_norm, "preserve_norm"), positions=str(positions),
                           steer_special=_flag(steer_special, "steer_special"))


class _EditMaskContext(CallContext):
    """The intervention's call context with its real-token mask replaced by ``mask`` ``[B, L]`` (the positions to
    edit), set before each steered forward call of a log-likelihood batch."""

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        super().pre_hook(module, args, kwargs)
        mask = self.mask
        if mask is None:
            return
        if self.valid is not None and tuple(self.valid.shape) != tuple(mask.shape):
            raise MatSteerError(f"Edit mask of shape {tuple(mask.shape)} does not match the call's "
                                f"{tuple(self.valid.shape)}; this is a bug in matsteer.eval.harness.")
        self.valid = mask if self.valid is None else self.valid & mask


def edit_mask(ids: torch.Tensor, real: torch.Tensor, n_context: torch.Tensor, positions: str,
              special: Sequence[int], steer_special: bool = False) -> torch.Tensor:
    """The positions ``[B, L]`` (bool) that matsteer's two-pass scorer edits, for one-pass scoring of context +
    continuation: ids ``[B, L]`` (right-padded), real ``[B, L]`` non-pad mask, n_context ``[B]`` the number of
    leading context tokens of each row. See the module docstring for the policies."""
    pos = torch.arange(ids.shape[1], device=ids.device)
    context = pos.unsqueeze(0) < n_context.unsqueeze(1)
    if positions == "all":
        sel = real.clone()
    elif positions in ("prompt", "last"):
        sel = real & context
    elif positions == "generated":
        sel = real & ~context
    else:
        raise ConfigError(f"Unknown positions={positions!r}; choose one of {', '.join(POSITIONS)}.")
    if not steer_special:
        sel &= ~protected_positions(ids, real, special, first=True)
    if positions == "last":  # the last editable context token, as the intervention's "last" picks it
        last = (sel.long() * (pos + 1)).argmax(-1, keepdim=True)
        sel = (pos.unsqueeze(0) == last) & sel
    return sel


class _SteeredModelView:
    """Stands in for the model inside one ``HFLM`` call: ``__call__`` and ``generate`` go through the steering
    handle, everything else (config, device, dtype...) is the model's."""

    def __init__(self, model: nn.Module, handle: SteeringHandle) -> None:
        self._model = model
        self._handle = handle

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def __call__(self, input_ids: torch.Tensor | None = None, **kwargs: Any) -> Any:
        return self._handle(input_ids=input_ids, **kwargs)

    def generate(self, input_ids: torch.Tensor | None = None, **kwargs: Any) -> Any:
        return self._handle.generate(input_ids=input_ids, **kwargs)


@functools.cache
def harness_model_class() -> type:
    """The ``matsteer`` lm-eval model class (an ``HFLM`` subclass), registered with lm-eval on first call.

    Model arguments: ``pretrained`` (a local folder, a HF id or the embedded default; default: the model the
    steerer was trained on), ``steerer`` (a steerer folder or hub repo; none: the plain model), ``multiplier``,
    ``multiplier_NAME``, ``force_NAME``, ``positions``, ``preserve_norm``, ``steer_special``, ``dtype`` (matsteer's:
    auto, float32, bfloat16, float16), ``device``, ``device_map``, ``allow_model_mismatch``, and ``HFLM``'s own
    (``batch_size``, ``max_length``, ``add_bos_token``...). The model is loaded by
    :func:`matsteer.activations.models.load_model`, as every other matsteer command loads it.
    """
    lm_eval = _import_lm_eval()
    hflm: Any = lm_eval.models.huggingface.HFLM

    class MatSteerLM(hflm):
        """lm-eval's ``HFLM`` steered by a matsteer steerer (see :mod:`matsteer.eval.harness`)."""

        _model: Any  # HFLM's model attribute (a transformers model, or the steered view during one call)

        def __init__(self, pretrained: str | None = None, steerer: str | Steerer | None = None,
                     multiplier: Any = 1.0, positions: str = "all", preserve_norm: Any = True,
                     steer_special: Any = False, dtype: str = "auto", device: str | None = None,
                     device_map: str | None = None, allow_model_mismatch: Any = False,
                     batch_size: int | str = 1, **kwargs: Any) -> None:
            steering = steering_from_model_args(kwargs, multiplier=multiplier, positions=positions,
                                                preserve_norm=preserve_norm, steer_special=steer_special)
            loaded_steerer: Steerer | None = None
            manifest: Mapping[str, Any] | None = None
            if steerer is not None and steerer != "":
                loaded_steerer = steerer if isinstance(steerer, Steerer) else from_pretrained(str(steerer))
                manifest = getattr(loaded_steerer, "manifest", None)
                steering.check(loaded_steerer)
            elif steering.multipliers or steering.force:
                raise ConfigError("multiplier_NAME / force_NAME were given without steerer=DIR; pass the steerer "
                                  "folder (or drop them for the plain model).")
            name = pretrained or (manifest["model"]["name"] if manifest else None)
            if not name:
                raise ConfigError(f"Pass pretrained=MODEL (a local folder, a HF id or {DEFAULT_MODEL!r}) or "
                                  "steerer=DIR (whose model is used).")
            if dtype not in DTYPE_CHOICES:
                raise ConfigError(f"dtype={dtype!r}: choose one of {', '.join(DTYPE_CHOICES)}.")
            if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
                # lm-eval's command line passes device="cuda:0" unless told otherwise; HFLM falls back to the CPU
                print(f"warning: device={device!r} but CUDA is not available; running on the CPU.", file=sys.stderr)
                device = "cpu"
            loaded = load_model(str(name), dtype=dtype, device=device, device_map=device_map, progress=False)
            site: Site | None = None
            if loaded_steerer is not None:
                site = Site.from_dict(manifest["site"]) if manifest else getattr(loaded_steerer, "site", None)
                if site is None:
                    raise ConfigError("This steerer carries no manifest and no site; load it with "
                                      "matsteer.from_pretrained(DIR) or pass the folder path.")
                if manifest:
                    for warning in check_compatible(manifest, model_name=loaded.name, model_hash=loaded.weight_hash,
                                                    d=loaded.hidden_size, site=site,
                                                    allow_model_mismatch=_flag(allow_model_mismatch,
                                                                               "allow_model_mismatch")):
                        print(f"warning: {warning}", file=sys.stderr)
            super().__init__(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size, **kwargs)
            self.pretrained = loaded.name  # HFLM keeps the model object there when given one
            self.model_name = loaded.name
            self.model_hash = loaded.weight_hash
            self.steerer: Steerer | None = loaded_steerer
            self.steerer_source = None if steerer is None or isinstance(steerer, Steerer) else str(steerer)
            self.site = site
            self.steering = steering
            self.steering_enabled = loaded_steerer is not None
            self._special = special_token_ids(self.tokenizer)

        @contextmanager
        def unsteered(self) -> Iterator[None]:
            """Inside the block the model runs unsteered (plain ``HFLM``): the baseline of :func:`run_harness`."""
            old, self.steering_enabled = self.steering_enabled, False
            try:
                yield
            finally:
                self.steering_enabled = old

        @property
        def steered(self) -> bool:
            return self.steerer is not None and self.steering_enabled

        @contextmanager
        def _session(self, positions: str) -> Iterator[SteeringHandle]:
            assert self.steerer is not None
            s = self.steering
            model: Any = self._model
            with steer(model, self.steerer, site=self.site, multipliers=s.multipliers,
                       global_multiplier=s.global_multiplier, force=s.force, preserve_norm=s.preserve_norm,
                       positions=positions) as handle:
                yield handle

        def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False,
                                  override_bs: int | None = None) -> list[tuple[float, bool]]:
            """``[(summed log-prob, greedy?)]`` per ``((context, continuation), context_enc, continuation_enc)``
            request: ``HFLM``'s when unsteered, else one steered pass per distinct row with the edit mask of the
            positions policy (rows sorted longest first and deduplicated, as ``HFLM`` groups them)."""
            if not self.steered:
                return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
            if self.backend != "causal":
                raise ConfigError("The matsteer harness model steers decoder-only (causal) models only.")
            rows: dict[tuple[tuple[int, ...], int], list[int]] = {}  # (input tokens, context length) -> requests
            for i, (_, context_enc, continuation_enc) in enumerate(requests):
                if not context_enc or not continuation_enc or len(continuation_enc) > self.max_length:
                    raise ConfigError(f"Request {i}: empty context or continuation, or a continuation longer than "
                                      f"max_length={self.max_length}; lm-eval cannot score it either.")
                # The last continuation token is never fed in; a too-long input loses tokens on the left (HFLM).
                inp = tuple((context_enc + continuation_enc)[-(self.max_length + 1):][:-1])
                rows.setdefault((inp, len(inp) - len(continuation_enc) + 1), []).append(i)
            keys = sorted(rows, key=lambda k: (-len(k[0]), k))
            size = override_bs or self.batch_size
            if not isinstance(size, int):  # "auto": HFLM's own detection (an unsteered probe of the longest row)
                size = self._detect_batch_size(requests)
            results: list[tuple[float, bool] | None] = [None] * len(requests)
            context = _EditMaskContext()
            with (torch.no_grad(), self._session("all") as handle,
                  torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                 enabled=self.mixed_precision_dtype is not None)):
                handle.intervention.context = context  # the policy is in the edit mask: "all" of what it allows
                starts = range(0, len(keys), max(1, size))
                for start in tqdm(starts, desc="Running steered loglikelihood batches",
                                  disable=disable_tqdm or self.rank != 0):
                    chunk = keys[start:start + max(1, size)]
                    width = max(len(k[0]) for k in chunk)
                    ids = torch.zeros((len(chunk), width), dtype=torch.long)  # HFLM pads with 0 on the right
                    real = torch.zeros((len(chunk), width), dtype=torch.bool)
                    for r, (inp, _) in enumerate(chunk):
                        ids[r, :len(inp)] = torch.tensor(inp)
                        real[r, :len(inp)] = True
                    n_context = torch.tensor([n for _, n in chunk])
                    ids, real = ids.to(self.device), real.to(self.device)
                    context.mask = edit_mask(ids, real, n_context.to(self.device), self.steering.positions,
                                             self._special, self.steering.steer_special)
                    logp = F.log_softmax(handle(input_ids=ids).logits, dim=-1, dtype=self.softmax_dtype)
                    for r, key in enumerate(chunk):
                        inplen = len(key[0])
                        for i in rows[key]:
                            request_str, _, cont = requests[i]
                            lp = logp[r, inplen - len(cont):inplen]  # [n_cont, V]: position j predicts cont[j]
                            cont_t = torch.tensor(cont, dtype=torch.long, device=lp.device)
                            answer = (float(lp.gather(-1, cont_t[:, None]).sum()),
                                      bool((lp.argmax(-1) == cont_t).all()))
                            results[i] = answer
                            if request_str is not None:  # rolling windows have none; they are cached per text
                                self.cache_hook.add_partial("loglikelihood", request_str, answer)
            return [r for r in results if r is not None]

        def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str],
                            **generation_kwargs: Any) -> torch.Tensor:
            """``HFLM``'s generation (its stopping criteria and sampling settings), steered when a steerer is on."""
            if not self.steered:
                return super()._model_generate(context, max_length, stop, **generation_kwargs)
            with (self._session(self.steering.positions) as handle,
                  protect_special(handle, self.tokenizer, self.steering.steer_special)):
                model: Any = self._model
                self._model = _SteeredModelView(model, handle)
                try:
                    return super()._model_generate(context, max_length, stop, **generation_kwargs)
                finally:
                    self._model = model

        def get_model_info(self) -> dict:
            """``HFLM``'s model info (no hub query for local folders or the embedded default) plus the steering."""
            if Path(self.model_name).exists() or self.model_name == DEFAULT_MODEL:
                info = {"model_num_parameters": sum(p.numel() for p in self._model.parameters()),
                        "model_dtype": str(self._model.dtype), "model_revision": self.revision, "model_sha": ""}
            else:
                info = dict(super().get_model_info())
            info["matsteer"] = {
                "model_name": self.model_name, "model_hash": self.model_hash, "steerer": self.steerer_source,
                "steered": self.steered, "site": None if self.site is None else self.site.to_dict(),
                **asdict(self.steering),
            }
            return info

    # Named as the registry's lazy placeholder names it (see register), also when this file runs as __main__.
    MatSteerLM.__module__, MatSteerLM.__qualname__ = _HARNESS_TARGET.split(":")[0], "MatSteerLM"
    try:
        lm_eval.api.registry.register_model(HARNESS_MODEL)(MatSteerLM)
    except ValueError:  # already registered: by this module run as a script (python -m) and imported as well
        existing = lm_eval.api.registry.get_model(HARNESS_MODEL)
        if getattr(existing, "__qualname__", None) != "MatSteerLM":
            raise ConfigError(f"Another lm-eval model is registered as {HARNESS_MODEL!r} ({existing}); "
                              "uninstall the package that registers it.") from None
        return existing
    return MatSteerLM


def register() -> bool:
    """Register ``matsteer`` in lm-eval's model registry as a lazy placeholder (the class is built when lm-eval
    first asks for it); run on import of this module. False when lm-eval is not installed."""
    try:  # an optional dependency; its registry module alone imports in a tenth of a second
        from lm_eval.api.registry import model_registry
    except ImportError:
        return False
    if HARNESS_MODEL not in model_registry.keys():
        model_registry.register(HARNESS_MODEL, target=_HARNESS_TARGET)
    return True


def __getattr__(name: str) -> Any:
    """``from matsteer.eval.harness import MatSteerLM`` builds (and registers) the class on first use."""
    if name == "MatSteerLM":
        return harness_model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- unsteered vs steered runs ---------------------------------------------------------------------------------


@dataclass
class HarnessResult:
    """One :func:`run_harness` run: lm-eval's per-task metrics without and with steering, and their differences.

    unsteered / steered: ``{task: {metric: value}}`` as lm-eval reports them (``"acc,none"``,
    ``"acc_stderr,none"``...); differences: ``{task: {metric: steered - unsteered}}`` for every numeric metric
    that is not a standard error. samples: ``{task: n}`` items scored per task.
    """

    model: str
    steerer: str
    tasks: list[str]
    settings: dict[str, Any]
    unsteered: dict[str, dict[str, Any]]
    steered: dict[str, dict[str, Any]]
    differences: dict[str, dict[str, float]]
    samples: dict[str, int]
    lm_eval_version: str
    limit: float | None = None
    num_fewshot: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _clean(value: Any) -> Any:
    """lm-eval's numbers as JSON values: NaN/Inf -> None, numpy scalars -> floats, "N/A" kept."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) or hasattr(value, "item"):
        f = float(value)
        return f if math.isfinite(f) else None
    return str(value)


def _metrics(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    # lm-eval names metrics "metric,filter" ("acc,none"); its other entries (alias, name, sample_len) are not metrics
    return {task: {k: _clean(v) for k, v in sorted(m.items()) if "," in k}
            for task, m in sorted((results.get("results") or {}).items())}


def metric_differences(unsteered: Mapping[str, Mapping[str, Any]],
                       steered: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """``{task: {metric: steered - unsteered}}`` for the numeric metrics both runs report (no standard errors)."""
    out: dict[str, dict[str, float]] = {}
    for task in sorted(set(unsteered) & set(steered)):
        diffs = {}
        for key in sorted(set(unsteered[task]) & set(steered[task])):
            a, b = unsteered[task][key], steered[task][key]
            if "_stderr" in key or isinstance(a, (bool, str)) or isinstance(b, (bool, str)) or a is None or b is None:
                continue
            diffs[key] = float(b) - float(a)
        out[task] = diffs
    return out


def _fmt(value: Any) -> str:
    return "n/a" if value is None or isinstance(value, str) else f"{float(value):.4f}"


def harness_markdown(result: HarnessResult) -> str:
    """The Markdown table of a :class:`HarnessResult`: per task and metric, unsteered ± stderr, steered ± stderr,
    and the difference."""
    s = result.settings
    lines = [
        f"# lm-evaluation-harness: unsteered vs steered ({result.model})",
        "",
        f"Steerer `{result.steerer}`, multiplier {s.get('global_multiplier')} "
        f"{s.get('multipliers') or ''}, positions `{s.get('positions')}`, lm-eval {result.lm_eval_version}, "
        f"limit {result.limit}, few-shot {result.num_fewshot}.",
        "",
        "| task | metric | n | unsteered | steered | steered − unsteered |",
        "|---|---|---|---|---|---|",
    ]
    for task, diffs in result.differences.items():
        for key, diff in diffs.items():
            metric, _, filt = key.partition(",")
            err_key = f"{metric}_stderr,{filt}"
            a, b = result.unsteered[task][key], result.steered[task][key]
            ea, eb = result.unsteered[task].get(err_key), result.steered[task].get(err_key)
            pm_a = f" ± {_fmt(ea)}" if isinstance(ea, (int, float)) else ""
            pm_b = f" ± {_fmt(eb)}" if isinstance(eb, (int, float)) else ""
            lines.append(f"| {task} | {key} | {result.samples.get(task, '')} | {_fmt(a)}{pm_a} | {_fmt(b)}{pm_b} "
                         f"| {diff:+.4f} |")
    return "\n".join(lines) + "\n"


def run_harness(
    model: str | None,
    steerer_dir: str | Path,
    tasks: Sequence[str],
    *,
    multiplier: float = 1.0,
    multipliers: Mapping[str, float] | None = None,
    positions: str = "prompt",
    limit: float | None = None,
    out_dir: str | Path | None = None,
    include_path: str | Path | None = None,
    num_fewshot: int | None = None,
    batch_size: int | str = 1,
    dtype: str = "auto",
    device: str | None = None,
    steer_special: bool = False,
    allow_model_mismatch: bool = False,
    bootstrap_iters: int = 1000,
    seed: int = 0,
) -> HarnessResult:
    """Run lm-eval ``tasks`` on ``model`` without steering and with the steerer at ``steerer_dir`` (one model load);
    write ``harness.json`` and ``harness.md`` to ``out_dir`` (atomically) when given.

    model: None for the model the steerer was trained on. include_path: a folder of extra lm-eval task YAMLs
    (local tasks). limit: items per task (a fraction if < 1), as lm-eval's ``--limit``.
    """
    lm_eval = _import_lm_eval()
    if not tasks:
        raise ConfigError("No tasks given; pass lm-eval task names, e.g. --tasks mmlu hellaswag.")
    if limit is not None and limit >= 1:
        limit = int(limit)  # lm-eval reads a float as a fraction of each task
    cls = harness_model_class()
    model_args: dict[str, Any] = {f"multiplier_{k}": v for k, v in (multipliers or {}).items()}
    lm = cls(pretrained=model, steerer=str(steerer_dir), multiplier=multiplier, positions=positions, dtype=dtype,
             device=device, batch_size=batch_size, steer_special=steer_special,
             allow_model_mismatch=allow_model_mismatch, **model_args)
    if include_path is not None and not Path(include_path).is_dir():
        raise ConfigError(f"include_path {include_path} is not a folder; pass the folder holding the task YAMLs.")
    manager = lm_eval.tasks.TaskManager(include_path=None if include_path is None else str(include_path))

    def evaluate() -> dict[str, Any]:
        out = lm_eval.evaluator.simple_evaluate(
            model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit, task_manager=manager,
            log_samples=False, bootstrap_iters=bootstrap_iters, random_seed=seed, numpy_random_seed=seed,
            torch_random_seed=seed, fewshot_random_seed=seed)
        if out is None:
            raise MatSteerError("lm-eval returned no results (a non-zero rank of a distributed run?).")
        return out

    with lm.unsteered():
        plain = evaluate()
    steered = evaluate()
    unsteered_m, steered_m = _metrics(plain), _metrics(steered)
    result = HarnessResult(
        model=lm.model_name, steerer=str(steerer_dir), tasks=list(tasks), settings=asdict(lm.steering),
        unsteered=unsteered_m, steered=steered_m, differences=metric_differences(unsteered_m, steered_m),
        samples={t: int((v or {}).get("effective", (v or {}).get("original", 0)))
                 for t, v in sorted((steered.get("n-samples") or {}).items())},
        lm_eval_version=str(getattr(lm_eval, "__version__", "unknown")), limit=limit, num_fewshot=num_fewshot,
    )
    if out_dir is not None:
        write_harness(result, out_dir)
    return result


def write_harness(result: HarnessResult, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``harness.json`` and ``harness.md`` into ``out_dir``, each atomically; returns both paths."""
    out = Path(out_dir)
    json_path, md_path = out / RESULTS_JSON, out / RESULTS_MD
    write_json(json_path, result.to_dict())
    with atomic_path(md_path) as tmp:
        tmp.write_text(harness_markdown(result), encoding="utf-8")
    return json_path, md_path


# --- command line -----------------------------------------------------------------------------------------------


def parse_multipliers(items: Sequence[str] | None) -> tuple[float, dict[str, float]]:
    """``--multiplier 2`` (global) and/or ``--multiplier toxicity=1.5`` (per attribute)."""
    global_m, per = 1.0, {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            if sep:
                per[name] = float(value)
            else:
                global_m = float(name)
        except ValueError as exc:
            raise ConfigError(f"Bad --multiplier {item!r}: use a number (global) or NAME=NUMBER.") from exc
    return global_m, per


def cmd_harness(args: argparse.Namespace) -> int:
    """``matsteer harness``: :func:`run_harness` with the parsed arguments; prints the Markdown table."""
    global_m, per = parse_multipliers(args.multiplier)
    batch_size: int | str = int(args.batch_size) if str(args.batch_size).isdigit() else str(args.batch_size)
    result = run_harness(
        args.model, args.steerer, args.tasks, multiplier=global_m, multipliers=per, positions=args.positions,
        limit=args.limit, out_dir=args.out, include_path=args.include_path, num_fewshot=args.num_fewshot,
        batch_size=batch_size, dtype=args.dtype, device=args.device, steer_special=args.steer_special,
        allow_model_mismatch=args.allow_model_mismatch)
    print(harness_markdown(result))
    print(f"wrote {Path(args.out) / RESULTS_JSON} and {Path(args.out) / RESULTS_MD}")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m matsteer.eval.harness ARGS``: lm-eval's command line (``lm_eval ARGS``) with ``matsteer``
    registered as a model (lm-eval builds the class through the registry's placeholder, see :func:`register`)."""
    _import_lm_eval()
    register()
    from lm_eval.__main__ import cli_evaluate  # lazy: optional dependency

    if argv is not None:
        sys.argv = ["lm-eval", *argv]
    else:
        sys.argv = ["lm-eval", *sys.argv[1:]]
    try:
        cli_evaluate()
    except MatSteerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


register()

if __name__ == "__main__":
    main()


__all__ = [
    "HARNESS_MODEL", "HarnessResult", "HarnessSteering", "cmd_harness", "edit_mask",
    "harness_markdown", "harness_model_class", "main", "metric_differences", "register", "run_harness",
    "steering_from_model_args", "write_harness",
]
