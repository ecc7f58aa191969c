"""LoReFT, low-rank representation fine-tuning (Wu et al., 2024), as a baseline of the comparison.

One intervention at the comparison's site, trained for every attribute at once on the same (prompt, desirable
completion) examples as the LoRA SFT row (:func:`matsteer.core.finetune.sft_examples`, training splits only):

    LoReFT(h) = h + Rᵀ(W h + b − R h)

with ``R ∈ R^{r×d}`` of orthonormal rows (torch's orthogonal parametrization), ``W ∈ R^{r×d}``, ``b ∈ R^r`` and
rank ``r`` (default 4, as pyreft's examples). The model's weights stay frozen; only R, W and b are trained.

The intervention is :class:`LoreftIntervention`, a torch module: pyvene 0.1.8 does not ship a LoReFT class, and
pyreft (which does) is not a dependency (it pins torchvision, wandb and an old seaborn), so the class is written out
here with pyreft's formula, parameter layout and state-dict names (``rotate_layer`` ``[d, r]``
= Rᵀ, ``weight`` ``[r, d]``, ``bias`` ``[r]``); unlike pyreft's, its ``W`` and ``b`` are float32 (pyreft's default
is bfloat16).

Training (:func:`train_loreft`): the causal-LM loss on the completion tokens only (prompt and padding masked; the
tokenizer's end-of-sequence token is appended to every completion, as trl does for the LoRA rows), averaged over the
batch's completion tokens; AdamW (no weight decay) with a linear decay of the learning rate to 0, as the
transformers Trainer that pyreft uses. Prompts and completions are tokenized as the evaluation tokenizes them
(prompt with the tokenizer's special tokens, completion without). **Where it intervenes**: the prompt tokens
(``train_positions="prompt"``, the paper's protocol, "f is applied to the activations of tokens in the query"), minus
the positions the evaluation never steers (the first token and special tokens); ``"last"`` takes the last
of those only (pyreft's ``l1``). In the comparison the trained edit is then scored like every steering method,
under each protocol's positions.

Zero steps is *no intervention*: pyreft's initialisation is not the identity (W and b are random), so an untrained
LoReFT is not scored; :attr:`ReftResult.steerer` is then the identity edit, bit for bit.

Deterministic for a seed on the CPU: the initialisation draws from a seeded RNG (the global one is left as it was)
and the batches from a seeded generator.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from matsteer.activations.models import (
    LoadedModel,
    model_device,
    pad_token_id,
    protected_positions,
    resolve_device,
    special_token_ids,
)
from matsteer.activations.sites import Site
from matsteer.core.finetune import SFTExample
from matsteer.core.steerer import Steerer, force_gates
from matsteer.errors import ConfigError, DataError, TrainingError

#: Which tokens the intervention edits in training: the prompt's (the paper's "query"), or its last one only.
REFT_POSITIONS: tuple[str, ...] = ("prompt", "last")
REFT_SCHEDULERS: tuple[str, ...] = ("linear", "constant")
#: The name of the single row of :class:`ReftSteerer` (one intervention for every attribute).
REFT_ATTRIBUTE = "all"
_EPS = 1e-12


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass
class ReftConfig:
    """LoReFT settings. ``rank``: r, the rows of R (pyreft's examples use 4). ``steps``: optimiser steps of
    ``batch_size`` examples (0: no intervention). ``train_positions``: which tokens are intervened in training
    (:data:`REFT_POSITIONS`; "prompt": every prompt token but the first and special tokens). ``device``: where
    to train (None: the model's device; another device or a non-float32 model trains a float32 copy).
    ``max_length``: prompt + completion tokens kept (the completion's tail is cut)."""

    rank: int = 4
    lr: float = 4e-3
    steps: int = 20
    batch_size: int = 16
    seed: int = 0
    device: str | None = None
    train_positions: str = "prompt"
    lr_scheduler: str = "linear"
    max_length: int = 512

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad setting and how to fix it."""

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.rank) or self.rank < 1:
            raise ConfigError(f"rank must be an integer ≥ 1, got {self.rank!r}; pass e.g. rank=4 (pyreft's).")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not (
                math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}; pass e.g. lr=4e-3.")
        if not is_int(self.steps) or self.steps < 0:
            raise ConfigError(f"steps must be an integer ≥ 0, got {self.steps!r}; pass e.g. steps=20 "
                              "(0: no intervention).")
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be an integer ≥ 1, got {self.batch_size!r}; pass e.g. 16.")
        if not is_int(self.seed) or self.seed < 0:
            raise ConfigError(f"seed must be an integer ≥ 0, got {self.seed!r}.")
        if self.device is not None and not isinstance(self.device, str):
            raise ConfigError(f"device must be None or a string such as 'cpu' or 'cuda', got {self.device!r}.")
        if self.train_positions not in REFT_POSITIONS:
            raise ConfigError(f"train_positions must be one of {', '.join(REFT_POSITIONS)}, got "
                              f"{self.train_positions!r}.")
        if self.lr_scheduler not in REFT_SCHEDULERS:
            raise ConfigError(f"lr_scheduler must be one of {', '.join(REFT_SCHEDULERS)}, got "
                              f"{self.lr_scheduler!r}.")
        if not is_int(self.max_length) or self.max_length < 2:
            raise ConfigError(f"max_length must be an integer ≥ 2 (tokens), got {self.max_length!r}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReftConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"Unknown LoReFT setting(s) {unknown}; valid: {', '.join(sorted(known))}.")
        return cls(**dict(data))


# --------------------------------------------------------------------------------------------------
# The edit
# --------------------------------------------------------------------------------------------------


def loreft_delta(h: torch.Tensor, rotate: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``Rᵀ(W h + b − R h)`` for ``h [..., d]``: rotate ``[d, r]`` (= Rᵀ, orthonormal columns), weight ``[r, d]``,
    bias ``[r]``. LoReFT's edit is ``h + loreft_delta(h, ...)``; training and scoring both compute it here."""
    return (nn.functional.linear(h, weight, bias) - h @ rotate) @ rotate.T


class _RotateLayer(nn.Module):
    """``x @ weight`` with ``weight`` ``[d, r]`` (Rᵀ), orthogonally initialised (pyvene's ``LowRankRotateLayer``)."""

    def __init__(self, d: int, rank: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(nn.init.orthogonal_(torch.empty(d, rank)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class LoreftIntervention(nn.Module):
    """``LoReFT(h) = h + Rᵀ(W h + b − R h)`` on ``h [..., d]``, computed in float32 (the input dtype back).

    ``rotate_layer``: the ``[d, r]`` rotation (Rᵀ) under torch's orthogonal parametrization, so its columns stay
    orthonormal while it trains; ``learned_source``: ``nn.Linear(d, r)`` (W, b). pyreft's layout and names.
    """

    def __init__(self, embed_dim: int, low_rank_dimension: int) -> None:
        super().__init__()
        self.rotate_layer: Any = nn.utils.parametrizations.orthogonal(_RotateLayer(embed_dim, low_rank_dimension))
        self.learned_source = nn.Linear(embed_dim, low_rank_dimension)

    def forward(self, base: torch.Tensor) -> torch.Tensor:
        x = base.float()
        out = x + loreft_delta(x, self.rotate_layer.weight, self.learned_source.weight, self.learned_source.bias)
        return out.to(base.dtype)

    def materialised(self) -> dict[str, torch.Tensor]:
        """``{"rotate_layer" [d, r], "weight" [r, d], "bias" [r]}``: R (materialised from its parametrization), W
        and b, detached float32 CPU copies (pyreft's state-dict names)."""
        with torch.no_grad():
            return {"rotate_layer": self.rotate_layer.weight.detach().float().cpu().clone(),
                    "weight": self.learned_source.weight.detach().float().cpu().clone(),
                    "bias": self.learned_source.bias.detach().float().cpu().clone()}


def make_loreft(d: int, rank: int, seed: int = 0) -> nn.Module:
    """A fresh :class:`LoreftIntervention` for hidden size ``d``, initialised from ``seed`` (R orthonormal, W and b
    as ``nn.Linear``'s default) without touching the global RNG's state."""
    if rank > d:
        raise ConfigError(f"LoReFT's rank ({rank}) must be at most the hidden size ({d}); pass a smaller rank.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LoreftIntervention(d, rank)


REFT_TENSORS: tuple[str, ...] = ("rotate_layer", "weight", "bias")


def check_reft_tensors(tensors: Mapping[str, torch.Tensor], d: int | None = None) -> tuple[int, int]:
    """``(d, rank)`` of LoReFT tensors ``{"rotate_layer" [d, r], "weight" [r, d], "bias" [r]}``; a
    :class:`ConfigError` when a tensor is missing, extra or of the wrong shape (or d differs from ``d``)."""
    if set(tensors) != set(REFT_TENSORS):
        raise ConfigError(f"LoReFT tensors must be exactly {', '.join(REFT_TENSORS)}, got {sorted(tensors)}.")
    rot, w, b = (tensors[k] for k in REFT_TENSORS)
    if rot.ndim != 2 or w.shape != (rot.shape[1], rot.shape[0]) or b.shape != (rot.shape[1],):
        raise ConfigError(f"LoReFT tensors do not fit together: rotate_layer {tuple(rot.shape)} (want [d, r]), "
                          f"weight {tuple(w.shape)} (want [r, d]), bias {tuple(b.shape)} (want [r]).")
    if d is not None and rot.shape[0] != d:
        raise ConfigError(f"The LoReFT intervention has d={rot.shape[0]} but the site has d={d}; use it at the "
                          "site (and on the model) it was trained for.")
    return int(rot.shape[0]), int(rot.shape[1])


class ReftSteerer(Steerer):
    """A trained LoReFT as a :class:`Steerer` (one row, :data:`REFT_ATTRIBUTE`), so that the cached scorer, the
    pyvene steering path and generation apply it like any steering method: ``f(a) = a + m·g·Rᵀ(W a + b − R a)``,
    ``m`` the (global) multiplier and ``g`` the gate, always 1 unless forced; at ``m = 1`` exactly LoReFT's edit.

    ``tensors``: ``{"rotate_layer", "weight", "bias"}`` (float32, see :func:`check_reft_tensors`), or None for no
    intervention (zero training steps): the input is then returned untouched. **Run time only**: θ and the linear
    gate are NaN, as in :class:`~matsteer.core.steerer.ModuleGatedSteerer`; LoReFT saves with
    :func:`matsteer.store.reft.save_reft`. Norm preservation is off unless asked for (LoReFT is trained without).
    """

    def __init__(self, d: int, tensors: Mapping[str, torch.Tensor] | None = None) -> None:
        super().__init__([REFT_ATTRIBUTE], int(d), ["desirable completion"], generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            self.theta.fill_(math.nan)
            self.gate_weight.fill_(math.nan)
            self.gate_bias.fill_(math.nan)
        self.requires_grad_(False)
        self.rank = 0
        if tensors is not None:
            _, self.rank = check_reft_tensors(tensors, int(d))
            for k in REFT_TENSORS:
                self.register_buffer(k, tensors[k].detach().float().clone())

    @property
    def is_identity(self) -> bool:
        """True for no intervention (zero training steps)."""
        return self.rank == 0

    def tensors(self) -> dict[str, torch.Tensor]:
        """The LoReFT tensors (CPU float32 copies; empty for no intervention)."""
        if self.is_identity:
            return {}
        return {k: getattr(self, k).detach().float().cpu().clone() for k in REFT_TENSORS}

    def gates(self, a: torch.Tensor) -> torch.Tensor:
        """Always on: ones ``[..., 1]`` (float32)."""
        return torch.ones(*a.shape[:-1], 1, dtype=torch.float32, device=a.device)

    def forward(self, a: torch.Tensor, scale: torch.Tensor | None = None, forced: torch.Tensor | None = None,
                preserve_norm: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(edited a [..., d] in a's dtype, gates [..., 1])``; scale / forced ``[1]`` or ``[B, 1]``."""
        gates = force_gates(self.gates(a), forced)
        if self.is_identity:
            return a, gates
        x = a.float()
        rot, w, b = (getattr(self, k).to(x.device) for k in REFT_TENSORS)
        delta = loreft_delta(x, rot, w, b)
        if scale is not None or forced is not None:
            coeff = gates
            if scale is not None:
                s = scale.to(x.device)
                coeff = coeff * (s if s.dim() == 1 else s.reshape(s.shape[0], *([1] * (gates.dim() - 2)), -1))
            delta = delta * coeff
        out = x + delta
        if preserve_norm:
            out = out * (x.norm(dim=-1, keepdim=True) / out.norm(dim=-1, keepdim=True).clamp_min(_EPS))
        return out.to(a.dtype), gates


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


@dataclass
class ReftResult:
    """What :func:`train_loreft` returns.

    ``steerer``: the trained edit (:class:`ReftSteerer`, on the training device; the identity after zero steps).
    ``losses``: the training loss of each step (before that step's update). ``wall_seconds``: the whole call;
    ``train_seconds``: the optimiser steps alone. ``examples``: training examples used.
    """

    steerer: ReftSteerer
    losses: list[float]
    steps: int
    wall_seconds: float
    train_seconds: float
    config: ReftConfig
    site: Site
    base_name: str
    base_hash: str
    examples: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """R (``rotate_layer`` ``[d, r]``), W, b as CPU float32 (empty after zero steps)."""
        return self.steerer.tensors()

    def edit(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """LoReFT's edit of site activations ``[n, d] -> [n, d]`` (the identity after zero steps)."""
        steerer = self.steerer

        def edit(a: torch.Tensor) -> torch.Tensor:
            return steerer(a)[0]

        return edit


@dataclass(frozen=True)
class _Encoded:
    ids: list[int]
    prompt_len: int  # tokens of the prompt; the rest is the completion


def _encode(tokenizer: Any, examples: Sequence[SFTExample], max_length: int) -> list[_Encoded]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("The tokenizer has no end-of-sequence token, which LoReFT training appends to each "
                          "completion; set tokenizer.eos_token first.")
    out = []
    for e in examples:
        prompt = list(tokenizer(e.prompt, add_special_tokens=True)["input_ids"])
        completion = list(tokenizer(e.completion, add_special_tokens=False)["input_ids"]) + [int(eos)]
        ids = (prompt + completion)[:max_length]
        if not prompt or len(ids) <= len(prompt):
            continue  # nothing of the completion left to learn
        out.append(_Encoded(ids, len(prompt)))
    return out


def _batch(rows: Sequence[_Encoded], pad: int, special: torch.Tensor, positions: str,
           device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``position_ids`` ``[B, L]``, ``labels`` (the completion's
    tokens, -100 elsewhere) and ``edit`` (which positions the intervention edits)."""
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    prompt = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = torch.tensor(r.ids)
        mask[i, : len(r.ids)] = 1
        prompt[i, : r.prompt_len] = True
    labels = ids.masked_fill(prompt | (mask == 0), -100)
    edit = prompt & ~protected_positions(ids, mask, special)
    if positions == "last":
        idx = torch.arange(1, width + 1)
        last = (edit.long() * idx).argmax(dim=1, keepdim=True)
        edit = (idx[None] - 1 == last) & edit.any(dim=1, keepdim=True)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "position_ids": torch.arange(width).expand(len(rows), width).to(device), "labels": labels.to(device),
            "edit": edit.to(device)}


def _hook(site: Site, model: nn.Module, intervention: nn.Module, where: dict[str, torch.Tensor]) -> Any:
    """Put ``intervention`` at ``site``: it edits the positions ``where["edit"] [B, L]`` of the current batch."""
    resolved = site.resolve(model)

    def edited(h: torch.Tensor) -> torch.Tensor:
        return torch.where(where["edit"].unsqueeze(-1), intervention(h), h)

    if resolved.io == "input":
        return resolved.module.register_forward_pre_hook(lambda _m, args: (edited(args[0]), *args[1:]))

    def after(_m: nn.Module, _args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (edited(output[0]), *output[1:])
        return edited(output)

    return resolved.module.register_forward_hook(after)


def _completion_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the batch's completion tokens; the vocabulary projection runs only where
    a completion token is predicted."""
    lm: Any = model
    hidden = lm.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           position_ids=batch["position_ids"], use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    scored = targets != -100
    logits = lm.get_output_embeddings()(hidden[:, :-1][scored])
    return nn.functional.cross_entropy(logits.float(), targets[scored])


def _check_device(cfg: ReftConfig, loaded: LoadedModel) -> torch.device:
    dev = resolve_device(cfg.device) if cfg.device is not None else model_device(loaded.model)
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"LoReFT trains on 'cpu' or 'cuda', got device={str(dev)!r}.")
    return dev


def train_loreft(
    loaded: LoadedModel,
    examples: Sequence[SFTExample],
    site: Site,
    cfg: ReftConfig | None = None,
    progress: bool = True,
) -> ReftResult:
    """Train one LoReFT intervention at ``site`` on ``examples`` (from :func:`~matsteer.core.finetune.sft_examples`,
    training split): the causal-LM loss on completion tokens, the model's weights frozen (see the module doc).

    Trains on ``loaded.model`` itself when it is float32 and on ``cfg.device`` (its hooks and gradient flags are
    restored afterwards), else on a float32 copy there; the returned edit lives on that device. ``cfg.steps == 0``
    trains nothing and returns the identity (no intervention).
    """
    cfg = cfg or ReftConfig()
    cfg.validate()
    if not examples:
        raise DataError("No LoReFT training data; build it with sft_examples() (training split).")
    start = time.perf_counter()
    dev = _check_device(cfg, loaded)
    tok = loaded.tokenizer
    rows = _encode(tok, examples, cfg.max_length)
    if not rows:
        raise DataError(f"No example keeps a completion token within max_length={cfg.max_length}; raise it.")
    probe = _hook_dim(loaded.model, site)

    def result(steerer: ReftSteerer, losses: list[float], train_s: float) -> ReftResult:
        return ReftResult(steerer=steerer, losses=losses, steps=cfg.steps, wall_seconds=time.perf_counter() - start,
                          train_seconds=train_s, config=cfg, site=site, base_name=loaded.name,
                          base_hash=loaded.weight_hash, examples=len(rows))

    if cfg.steps == 0:
        return result(ReftSteerer(probe), [], 0.0)

    base = loaded.model
    own_model = model_device(base) == dev and next(base.parameters()).dtype == torch.float32
    model = base if own_model else copy.deepcopy(base).to(device=dev, dtype=torch.float32)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    intervention: Any = make_loreft(probe, cfg.rank, cfg.seed).to(dev)
    params = [p for p in intervention.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, (lambda s: max(0.0, (cfg.steps - s) / cfg.steps)) if cfg.lr_scheduler == "linear" else
        (lambda s: 1.0))
    order = _batches(len(rows), cfg.batch_size, cfg.steps, cfg.seed)
    pad, special = pad_token_id(tok), torch.tensor(special_token_ids(tok), dtype=torch.long)
    where: dict[str, torch.Tensor] = {}
    losses: list[float] = []
    handle = _hook(site, model, intervention, where)
    bar = tqdm(total=cfg.steps, desc=f"LoReFT rank {cfg.rank}", unit="step", disable=not progress, leave=True)
    t_train = time.perf_counter()
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        model.eval()
        for idx in order:
            batch = _batch([rows[i] for i in idx], pad, special, cfg.train_positions, dev)
            where["edit"] = batch["edit"]
            loss = _completion_loss(model, batch)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingError(f"LoReFT diverged (a non-finite loss at step {len(losses) + 1}); lower lr "
                                    f"(now {cfg.lr}).")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
    finally:
        bar.close()
        handle.remove()
        if own_model:
            for p, flag in flags:
                p.requires_grad_(flag)
            model.train(was_training)
    train_s = time.perf_counter() - t_train
    steerer = ReftSteerer(probe, intervention.materialised()).to(dev)
    del model, intervention, optimiser
    return result(steerer, losses, train_s)


def _hook_dim(model: nn.Module, site: Site) -> int:
    """The width of the activations at ``site``: the model's hidden size for the residual stream, the output
    projection's output (``attn_output``) or input (``attn_heads``) width otherwise."""
    resolved = site.resolve(model)
    module = resolved.module
    d: Any = None
    if site.component != "residual":
        if isinstance(module, nn.Linear):
            d = module.in_features if resolved.io == "input" else module.out_features
        elif isinstance(weight := getattr(module, "weight", None), torch.Tensor) and weight.ndim == 2:
            d = int(weight.shape[0 if resolved.io == "input" else 1])  # GPT-2's Conv1D: [in, out]
    if d is None:
        config = getattr(model, "config", None)
        d = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if not isinstance(d, int):
        raise ConfigError(f"Cannot tell the width of the activations at {site} in {type(model).__name__}.")
    return d


def _batches(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """``steps`` batches of example indices: seeded permutations of ``range(n)``, one epoch after another, each cut
    into batches of ``batch_size`` (an epoch's last batch may be smaller)."""
    g = torch.Generator().manual_seed(seed)
    out: list[list[int]] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=g).tolist()
        out += [perm[i:i + batch_size] for i in range(0, n, batch_size)]
    return out[:steps]
