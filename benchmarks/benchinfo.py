"""What every benchmark JSON records about the run: the CPU model, torch threads, dtype and the date.

Imported by the ``bench_*.py`` scripts (they put this folder on ``sys.path``) and read back by ``report.py``.
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import Any

import torch

from matsteer.activations.models import DTYPE_CHOICES  # noqa: F401  ("auto": matsteer.activations.models.auto_dtype), re-exported
from matsteer.store.provenance import cpu_model


def dtype_name(dtype: torch.dtype | str) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def machine_fields(dtype: torch.dtype | str | None = None, threads: int | None = None) -> dict[str, Any]:
    """The fields every benchmark JSON carries at its top level (``threads``: torch's intra-op threads now)."""
    now = _dt.datetime.now().astimezone()
    out: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": int(threads if threads is not None else torch.get_num_threads()),
        "torch": torch.__version__,
        "date": now.date().isoformat(),
        "timestamp": now.isoformat(timespec="seconds"),
    }
    if dtype is not None:
        out["dtype"] = dtype_name(dtype)
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out
