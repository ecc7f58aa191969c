"""The fine-tuning baselines of the paper's Table 1: one LoRA adapter for all attributes, trained by SFT or DPO.

The paper compares MAT-Steer with supervised fine-tuning and direct preference optimisation, both with LoRA (rank
16, alpha 32, lr 5e-6, batch 16, "10 iterations"), one adapter for every attribute at once. This module builds
their training data from the shipped data sets' **training splits** (never test), trains with the field's
libraries (peft's ``LoraConfig`` / ``get_peft_model``, trl's ``SFTTrainer`` and ``DPOTrainer``, which run offline
on the CPU with transformers 5) and returns the adapter merged into a *copy* of the weights, so the model passed
in is never changed.

Data, as the evaluation scores it: each multiple-choice view of :func:`matsteer.data.load_mc_questions` is filled
into its template and cut where the evaluation cuts it (context ``"Q: x A:"``, continuation ``" y"``):

- SFT examples, (prompt, desirable completion): TruthfulQA's true answers, ToxiGen's benign statements after the
  neutral request of the ``toxigen_pref`` task, BBQ's correct answers.
- DPO pairs, (prompt, chosen, rejected): TruthfulQA true vs false answers, ToxiGen benign vs toxic statement
  after the same neutral request, BBQ correct vs the stereotype-consistent (else another incorrect) answer.

Losses: SFT is the causal-LM loss on completion tokens only (trl's ``completion_only_loss``; the prompt is
masked). DPO is trl's ``sigmoid`` loss, ``-log σ(β·((π_c − r_c) − (π_r − r_r)))`` over summed completion
log-probabilities, with the reference model = the base model (the adapter disabled); :func:`dpo_loss` writes the
same formula out as a pure function, and the tests check trl's value against it. trl appends the tokenizer's
end-of-sequence token to every completion (SFT and DPO), so the trained completions end there.

Training is float32 on a float32 copy (the merged model is cast back to the input model's dtype) and
deterministic for a seed on the CPU.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.utils.notebook import NotebookProgressCallback

from matsteer.activations.models import LoadedModel, resolve_device, weight_fingerprint
from matsteer.data import ATTRIBUTE_OF, TOXIGEN_PREF, MCQuestion, fill_template, load_mc_questions
from matsteer.errors import ConfigError, DataError, TrainingError

METHODS: tuple[str, str] = ("sft", "dpo")
#: The data sets the adapter is trained on, one per attribute (ToxiGen through its benign-vs-toxic pairs).
FINETUNE_DATASETS: tuple[str, ...] = ("truthfulqa", "toxigen", "bbq")
#: Which multiple-choice view each data set's examples come from.
_MC_VIEW: dict[str, str] = {"truthfulqa": "truthfulqa", "toxigen": TOXIGEN_PREF, "bbq": "bbq"}
#: Splits fine-tuning data may come from: train for training, dev for a held-out loss. Never test.
DATA_SPLITS: tuple[str, str] = ("train", "dev")
LR_SCHEDULERS: tuple[str, ...] = ("linear", "constant", "cosine")
#: Llama-style attention projections (Llama, Mistral, Qwen2, SmolLM2).
LLAMA_ATTENTION: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
_INSTALL_HINT = "install the fine-tuning extra: pip install 'matsteer[finetune]' (peft and trl)"


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass
class FinetuneConfig:
    """LoRA fine-tuning settings; the defaults are the paper's (rank 16, alpha 32, lr 5e-6, batch 16, 10 steps).

    ``steps`` counts optimiser steps of ``batch_size`` examples (SFT) or pairs (DPO); 0 returns the base weights.
    ``dropout`` and ``lr_scheduler`` are not stated by the paper (0.0 is peft's default, linear decay the
    transformers Trainer's). ``beta`` is DPO's temperature (unused by SFT). ``max_length`` truncates
    prompt+completion tokens.
    """

    method: str = "sft"
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    lr: float = 5e-6
    steps: int = 10
    batch_size: int = 16
    beta: float = 0.1
    seed: int = 0
    target_modules: tuple[str, ...] = LLAMA_ATTENTION
    max_length: int = 512
    lr_scheduler: str = "linear"

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list):  # from JSON
            self.target_modules = tuple(self.target_modules)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad setting and how to fix it."""

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def positive(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0

        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}; "
                              "pass method='sft' or method='dpo'.")
        if not is_int(self.rank) or self.rank < 1:
            raise ConfigError(f"rank must be an integer ≥ 1, got {self.rank!r}; pass e.g. rank=16 (the paper's).")
        if not positive(self.alpha):
            raise ConfigError(f"alpha must be a positive number, got {self.alpha!r}; pass e.g. alpha=32 "
                              "(the paper's; the update is scaled by alpha/rank).")
        if not (isinstance(self.dropout, (int, float)) and not isinstance(self.dropout, bool)
                and 0 <= self.dropout < 1):
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}; pass e.g. dropout=0.0.")
        if not positive(self.lr):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}; pass e.g. lr=5e-6 (the paper's).")
        if not is_int(self.steps) or self.steps < 0:
            raise ConfigError(f"steps must be an integer ≥ 0, got {self.steps!r}; pass e.g. steps=10 "
                              "(0 keeps the base weights).")
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be an integer ≥ 1, got {self.batch_size!r}; pass e.g. 16.")
        if not positive(self.beta):
            raise ConfigError(f"beta must be a positive number, got {self.beta!r}; pass e.g. beta=0.1 "
                              "(DPO's temperature).")
        if not is_int(self.seed) or self.seed < 0:
            raise ConfigError(f"seed must be an integer ≥ 0, got {self.seed!r}.")
        if (not isinstance(self.target_modules, tuple) or not self.target_modules
                or not all(isinstance(t, str) and t for t in self.target_modules)):
            raise ConfigError(f"target_modules must be a non-empty tuple of module names, got "
                              f"{self.target_modules!r}; pass e.g. {LLAMA_ATTENTION!r}.")
        if not is_int(self.max_length) or self.max_length < 2:
            raise ConfigError(f"max_length must be an integer ≥ 2 (tokens), got {self.max_length!r}; "
                              "pass e.g. 512.")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ConfigError(f"lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, got "
                              f"{self.lr_scheduler!r}.")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FinetuneConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"Unknown fine-tuning setting(s) {unknown}; valid: {', '.join(sorted(known))}.")
        return cls(**dict(data))


# --------------------------------------------------------------------------------------------------
# Training data from the shipped training splits
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SFTExample:
    """One supervised example: ``completion`` is trained to follow ``prompt`` (its loss only; the prompt masked)."""

    attribute: str
    dataset: str
    group: str
    prompt: str
    completion: str


@dataclass(frozen=True)
class PreferencePair:
    """One DPO pair: after ``prompt``, ``chosen`` (the desirable side) should become likelier than ``rejected``."""

    attribute: str
    dataset: str
    group: str
    prompt: str
    chosen: str
    rejected: str


def split_context(template: str, prompt: str, answer: str) -> tuple[str, str]:
    """``(context, continuation)`` of a filled template, cut as the evaluation cuts it (lm-eval's convention):
    ``"Q: x A:"`` and ``" y"``; the space before the answer starts the continuation."""
    text, start, _ = fill_template(template, prompt, answer)
    context = text[:start].rstrip()
    return context, text[len(context):]


def _choice(q: MCQuestion, k: int) -> tuple[str, str]:
    return split_context(q.template, q.prompt, q.choices[k])


def _bbq_rejected(q: MCQuestion) -> int:
    """The stereotype-consistent option when it is known and wrong, else the first incorrect option."""
    gold = q.correct[0]
    biased = q.meta.get("biased_answer", "")
    if biased != "" and int(biased) != gold:
        return int(biased)
    return next(k for k in range(len(q.choices)) if k != gold)


def _questions(datasets: Sequence[str], split: str, limit: int | None, data_dir: Any,
               seed: int) -> list[tuple[str, MCQuestion]]:
    if split not in DATA_SPLITS:
        raise ConfigError(f"Fine-tuning data come from the train split (or dev, for a held-out loss), got "
                          f"split={split!r}; test questions must never be trained on.")
    if not datasets:
        raise ConfigError(f"No data sets given; pass some of {', '.join(FINETUNE_DATASETS)}.")
    out = []
    for ds in datasets:
        if ds not in _MC_VIEW:
            raise ConfigError(f"No fine-tuning data for {ds!r}; valid choices: {', '.join(FINETUNE_DATASETS)}.")
        out += [(ds, q) for q in load_mc_questions(_MC_VIEW[ds], split, data_dir=data_dir, limit=limit, seed=seed)]
    return out


def sft_examples(
    datasets: Sequence[str] = FINETUNE_DATASETS,
    *,
    split: str = "train",
    limit: int | None = None,
    data_dir: Any = None,
    seed: int = 0,
) -> list[SFTExample]:
    """(prompt, desirable completion) for each attribute: TruthfulQA's true answers (every one), ToxiGen's benign
    statement of each benign-vs-toxic pair after its neutral request, BBQ's correct answer.

    ``limit``: at most this many questions (pairs for ToxiGen) per data set, picked as the loaders pick them.
    Data sets come one after another; the trainer shuffles (seeded)."""
    out = []
    for ds, q in _questions(datasets, split, limit, data_dir, seed):
        for k in q.correct:
            context, completion = _choice(q, k)
            out.append(SFTExample(ATTRIBUTE_OF[ds], ds, q.group, context, completion))
    return out


def dpo_pairs(
    datasets: Sequence[str] = FINETUNE_DATASETS,
    *,
    split: str = "train",
    limit: int | None = None,
    data_dir: Any = None,
    seed: int = 0,
) -> list[PreferencePair]:
    """(prompt, chosen, rejected) from the same records as :func:`sft_examples`.

    TruthfulQA: true vs false answers of a question, zipped in file order and cycling the shorter list, so every
    answer is used at least once (max(#true, #false) pairs). ToxiGen: the benign vs the toxic statement of each
    pair. BBQ: the correct answer vs the stereotype-consistent one where that is known and wrong, else the first
    incorrect option (one pair per question)."""
    out = []
    for ds, q in _questions(datasets, split, limit, data_dir, seed):
        good = q.correct
        bad = [k for k in range(len(q.choices)) if q.labels[k] == 0]
        if not bad:
            raise DataError(f"{ds} question {q.group} has no incorrect choice to reject; check the data file.")
        if ds == "bbq":
            combos = [(good[0], _bbq_rejected(q))]
        else:
            combos = [(good[i % len(good)], bad[i % len(bad)]) for i in range(max(len(good), len(bad)))]
        for g, b in combos:
            context, chosen = _choice(q, g)
            _, rejected = _choice(q, b)
            out.append(PreferencePair(ATTRIBUTE_OF[ds], ds, q.group, context, chosen, rejected))
    return out


# --------------------------------------------------------------------------------------------------
# The DPO objective, written out
# --------------------------------------------------------------------------------------------------


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """DPO's loss per pair ``[N]``: ``-log σ(β·((π_c − r_c) − (π_r − r_r)))``.

    Each input is ``[N]``, the summed log-probability of a completion's tokens after its prompt, under the policy
    (π) or the reference (r) model. trl's ``DPOTrainer`` (``loss_type="sigmoid"``) computes this and averages it
    over the batch; :func:`train_lora_dpo` trains with trl, this is the formula the tests hold it to.
    """
    margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return -torch.nn.functional.logsigmoid(beta * margin)


# --------------------------------------------------------------------------------------------------
# LoRA: attaching, merging into a copy
# --------------------------------------------------------------------------------------------------


# peft and trl are the optional ``finetune`` extra: imported on use, so that a missing extra is one clear error.
def _peft() -> Any:
    try:
        import peft
    except ImportError as exc:
        raise ConfigError(f"LoRA fine-tuning needs peft; {_INSTALL_HINT}.") from exc
    return peft


def _trl() -> Any:
    try:
        import trl
    except ImportError as exc:
        raise ConfigError(f"LoRA fine-tuning needs trl; {_INSTALL_HINT}.") from exc
    return trl


def adaptable_modules(model: nn.Module) -> list[str]:
    """Sorted short names of the layers LoRA can adapt (``nn.Linear`` and GPT-2's ``Conv1D``), e.g. ``q_proj``."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if name and type(m).__name__ in ("Linear", "Conv1D")})


def check_target_modules(model: nn.Module, targets: Sequence[str]) -> None:
    """Refuse target module names the model does not have (a :class:`ConfigError` listing the ones it has)."""
    have = adaptable_modules(model)
    missing = [t for t in targets if t not in have]
    if missing:
        raise ConfigError(f"LoRA target_modules {missing} are not layers of this model; its linear layers are "
                          f"{', '.join(have)}. Pass target_modules=(...) from those (e.g. ('c_attn',) for "
                          "GPT-2; the default suits Llama-style models).")


def lora_config(cfg: FinetuneConfig) -> Any:
    """peft's ``LoraConfig`` for ``cfg`` (one adapter, causal LM)."""
    return _peft().LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM")


def read_lora_config(folder: str | Path) -> Any:
    """peft's ``LoraConfig`` from a folder's ``adapter_config.json`` (JSON only)."""
    return _peft().LoraConfig.from_pretrained(str(folder))


def _float_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """A float32 copy of ``model`` on ``device``; the original is not touched."""
    return copy.deepcopy(model).to(device=device, dtype=torch.float32)


def merged_copy(loaded: LoadedModel, peft_config: Any, adapter: Mapping[str, torch.Tensor],
                device: str | torch.device | None = None, suffix: str = "lora") -> LoadedModel:
    """The adapter merged into a copy of ``loaded``'s weights: a new :class:`LoadedModel` in ``loaded``'s dtype.

    ``adapter``: peft's adapter state dict (``get_peft_model_state_dict``; keys ``...q_proj.lora_A.weight``,
    ``lora_A`` ``[rank, d_in]``, ``lora_B`` ``[d_out, rank]``). The merge runs in float32 (W + B·A·alpha/rank), so
    equal adapters give bit-identical weights: training and loading a saved adapter both come through here.
    """
    peft = _peft()
    dev = resolve_device(device) if device is not None else next(loaded.model.parameters()).device
    dtype = loaded.dtype
    wrapped = peft.get_peft_model(_float_copy(loaded.model, dev), peft_config)
    result = peft.set_peft_model_state_dict(wrapped, {k: v.to(dev) for k, v in adapter.items()})
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if getattr(result, "unexpected_keys", None) or missing:
        raise ConfigError(f"The adapter does not fit this model (unexpected "
                          f"{list(result.unexpected_keys)[:3]}, missing {missing[:3]}): it was made for another "
                          "architecture or LoRA config. Load it onto the model it was made for.")
    merged: nn.Module = wrapped.merge_and_unload().to(dtype=dtype).eval()
    for p in merged.parameters():
        p.requires_grad_(False)
    return LoadedModel(model=merged, tokenizer=loaded.tokenizer, name=f"{loaded.name}+{suffix}",
                       weight_hash=weight_fingerprint(merged))


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


@dataclass
class FinetuneResult:
    """What a LoRA run returns.

    ``adapted``: the adapter merged into a copy of the base weights (the base model is unchanged). ``adapter``:
    peft's adapter state dict (CPU float32; what :func:`matsteer.store.adapters.save_adapter` writes).
    ``losses``: the training loss of each step (before that step's update). ``eval_loss_before`` /
    ``eval_loss_after``: the same loss on ``eval_data`` before and after training (None without ``eval_data``).
    ``wall_seconds`` covers the whole call (copies, evaluations, merge); ``extra["train_seconds"]`` the
    optimiser steps alone.
    """

    adapted: LoadedModel
    adapter: dict[str, torch.Tensor]
    peft_config: Any
    losses: list[float]
    steps: int
    wall_seconds: float
    config: FinetuneConfig
    base_name: str
    base_hash: str
    examples: int
    eval_loss_before: float | None = None
    eval_loss_after: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class _LossBar(TrainerCallback):
    """Records every logged training loss and shows one tqdm bar (in place of the Trainer's own printing)."""

    def __init__(self, total: int, desc: str, progress: bool) -> None:
        self.losses: list[float] = []
        self.bar = tqdm(total=total, desc=desc, unit="step", disable=not progress, leave=True)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))
            self.bar.set_postfix(loss=f"{self.losses[-1]:.4f}")

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _training_args(cls: Any, cfg: FinetuneConfig, dev: torch.device, out_dir: str, **extra: Any) -> Any:
    # Off: trl turns it on by default, and it only slows a model this small. (transformers 5.2x renamed it.)
    names = {f.name for f in fields(cls)}
    extra["activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"] = False
    return cls(
        output_dir=out_dir, max_steps=max(cfg.steps, 1), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=1, learning_rate=cfg.lr,
        lr_scheduler_type=cfg.lr_scheduler, warmup_steps=0, weight_decay=0.0, seed=cfg.seed, data_seed=cfg.seed,
        logging_steps=1, logging_strategy="steps", save_strategy="no", eval_strategy="no", report_to="none",
        use_cpu=dev.type == "cpu", bf16=False, fp16=False,  # training is float32 (trl defaults to bf16)
        dataloader_pin_memory=False, dataloader_num_workers=0, max_length=cfg.max_length,
        disable_tqdm=True, **extra,
    )


def _check_device(device: str | torch.device | None, loaded: LoadedModel) -> torch.device:
    dev = resolve_device(device) if device is not None else next(loaded.model.parameters()).device
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"Fine-tuning runs on 'cpu' or 'cuda', got device={str(dev)!r}.")
    if dev.type == "cuda" and dev.index not in (None, 0):
        # The transformers Trainer trains on the first visible GPU.
        raise ConfigError(f"device={str(dev)!r}: fine-tuning uses the first visible GPU; pass device='cuda' and "
                          f"choose the GPU with CUDA_VISIBLE_DEVICES={dev.index}.")
    return dev


def _run(
    loaded: LoadedModel,
    rows: list[dict[str, str]],
    eval_rows: list[dict[str, str]] | None,
    cfg: FinetuneConfig,
    method: str,
    progress: bool,
    device: str | torch.device | None,
) -> FinetuneResult:
    """Shared body of the two trainers: attach LoRA to a float32 copy, train with trl, merge into another copy."""
    cfg.validate()
    if cfg.method != method:
        raise ConfigError(f"FinetuneConfig.method is {cfg.method!r} but train_lora_{method} was called; pass "
                          f"FinetuneConfig(method={method!r}) or call train_lora_{cfg.method}.")
    if not rows:
        raise DataError(f"No {method.upper()} training data; build it with "
                        f"{'sft_examples' if method == 'sft' else 'dpo_pairs'}() (training split).")
    peft, trl = _peft(), _trl()

    dev = _check_device(device, loaded)
    check_target_modules(loaded.model, cfg.target_modules)
    if loaded.tokenizer.eos_token is None:
        raise ConfigError("The tokenizer has no end-of-sequence token, which trl appends to each completion; set "
                          "tokenizer.eos_token before fine-tuning.")
    start = time.perf_counter()
    # LoRA's A is drawn from the global RNG: seed it, so equal settings give equal adapters.
    torch.manual_seed(cfg.seed)
    peft_cfg = lora_config(cfg)
    model = peft.get_peft_model(_float_copy(loaded.model, dev), peft_cfg)
    trainer: Any = None
    losses: list[float] = []
    before = after = None
    extra: dict[str, Any] = {}
    if cfg.steps > 0 or eval_rows:
        was_enabled = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # trl's tokenizing maps would print three bars per run
        try:
            with tempfile.TemporaryDirectory(prefix="matsteer-lora-") as out_dir:
                if method == "sft":
                    args = _training_args(trl.SFTConfig, cfg, dev, out_dir, completion_only_loss=True,
                                          packing=False)
                    trainer_cls = trl.SFTTrainer
                else:
                    args = _training_args(trl.DPOConfig, cfg, dev, out_dir, beta=cfg.beta, loss_type=["sigmoid"],
                                          precompute_ref_log_probs=False)
                    trainer_cls = trl.DPOTrainer
                trainer = trainer_cls(
                    model=model, args=args, processing_class=loaded.tokenizer,
                    train_dataset=datasets.Dataset.from_list(rows),
                    eval_dataset=datasets.Dataset.from_list(eval_rows) if eval_rows else None,
                )
                for cb in (PrinterCallback, ProgressCallback, NotebookProgressCallback):
                    trainer.remove_callback(cb)
                if eval_rows:
                    before = float(trainer.evaluate()["eval_loss"])
                if cfg.steps > 0:
                    bar = _LossBar(cfg.steps, f"LoRA {method.upper()}", progress)
                    trainer.add_callback(bar)
                    t_train = time.perf_counter()
                    try:
                        trainer.train()
                    finally:
                        bar.close()
                    extra["train_seconds"] = time.perf_counter() - t_train
                    losses = bar.losses
                if eval_rows and cfg.steps > 0:
                    after = float(trainer.evaluate()["eval_loss"])
                elif eval_rows:
                    after = before
        finally:
            if was_enabled:
                datasets.enable_progress_bars()
    adapter = {k: v.detach().to("cpu", torch.float32).clone()
               for k, v in peft.get_peft_model_state_dict(model).items()}
    del model, trainer  # free the training copy before the merged one is made
    adapted = merged_copy(loaded, peft_cfg, adapter, device=dev, suffix=f"lora-{method}")
    if any(not math.isfinite(x) for x in losses):
        raise TrainingError(f"LoRA {method.upper()} diverged (a non-finite loss); lower lr (now {cfg.lr}).")
    return FinetuneResult(
        adapted=adapted, adapter=adapter, peft_config=peft_cfg, losses=losses, steps=cfg.steps,
        wall_seconds=time.perf_counter() - start, config=cfg, base_name=loaded.name,
        base_hash=loaded.weight_hash, examples=len(rows), eval_loss_before=before, eval_loss_after=after,
        extra=extra,
    )


def train_lora_sft(
    loaded: LoadedModel,
    examples: Sequence[SFTExample],
    cfg: FinetuneConfig | None = None,
    progress: bool = True,
    *,
    eval_examples: Sequence[SFTExample] | None = None,
    device: str | torch.device | None = None,
) -> FinetuneResult:
    """Supervised fine-tuning with one LoRA adapter (trl's ``SFTTrainer``, loss on completion tokens only).

    examples: from :func:`sft_examples` (training split). eval_examples: a held-out set (e.g. the dev split)
    whose loss is measured before and after. device: where to train (default: the model's device); the returned
    model lives there too. Deterministic for ``cfg.seed`` on the CPU (the global RNGs are seeded, as the
    transformers Trainer seeds them).
    """
    cfg = cfg or FinetuneConfig(method="sft")
    rows = [{"prompt": e.prompt, "completion": e.completion} for e in examples]
    eval_rows = [{"prompt": e.prompt, "completion": e.completion} for e in eval_examples or ()]
    return _run(loaded, rows, eval_rows or None, cfg, "sft", progress, device)


def train_lora_dpo(
    loaded: LoadedModel,
    pairs: Sequence[PreferencePair],
    cfg: FinetuneConfig | None = None,
    progress: bool = True,
    *,
    eval_pairs: Sequence[PreferencePair] | None = None,
    device: str | torch.device | None = None,
) -> FinetuneResult:
    """Direct preference optimisation with one LoRA adapter (trl's ``DPOTrainer``, ``sigmoid`` loss = :func:`dpo_loss`,
    reference = the base model with the adapter disabled).

    pairs: from :func:`dpo_pairs` (training split). eval_pairs / device: as in :func:`train_lora_sft`.
    """
    cfg = cfg or FinetuneConfig(method="dpo")
    rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    eval_rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in eval_pairs or ()]
    return _run(loaded, rows, eval_rows or None, cfg, "dpo", progress, device)
