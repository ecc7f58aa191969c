"""One attribute's steering vector as a llama.cpp control vector (a GGUF file).

llama.cpp (``--control-vector FILE`` / ``--control-vector-scaled FILE SCALE``, ``common_control_vector_load``)
reads a GGUF file whose ``general.architecture`` is ``controlvector``, with metadata ``controlvector.model_hint``
(a hint, not checked) and ``controlvector.layer_count`` (the number of direction tensors), and one 1-D float32
tensor of length ``n_embd`` per steered layer, named ``direction.{il}``. At run time it adds ``scale ·
direction.{il}`` to the output of decoder block ``il`` (0-based, after the block's feed-forward residual add), at
every token; ``direction.0`` is refused, since llama.cpp keeps no slot for block 0. Our ``Site(layer, "residual")``
is the output of decoder block ``layer``, so θ_t goes to ``direction.{layer}`` unchanged.

What does not carry over, said in a warning and in the file's metadata:

* **gates**: MAT-Steer adds ``G_t(a) · θ_t`` with a per-token gate; llama.cpp adds the vector uniformly, at every
  token, as if the gate were 1 (the "uniform gates" row of the comparison);
* **norm preservation**: MAT-Steer rescales the steered activation to ``‖a‖`` by default; llama.cpp does not;
* **other sites**: llama.cpp steers the residual stream only, so a steerer trained at ``attn_output`` or
  ``attn_heads`` is refused.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matsteer.activations.sites import Site
from matsteer.core.steerer import Steerer
from matsteer.errors import ConfigError
from matsteer.files import atomic_path
from matsteer.store.artifacts import load_steerer

__all__ = ["ARCHITECTURE", "ControlVectorExport", "export_control_vector", "export_steerer_folder"]

ARCHITECTURE = "controlvector"


@dataclass(frozen=True)
class ControlVectorExport:
    """What was written: the file, the llama.cpp tensor name, the attribute and the caveat to tell the user."""

    path: Path
    tensor: str
    attribute: str
    layer: int
    multiplier: float
    note: str


def _note(attribute: str) -> str:
    return (f"The {attribute!r} gate is not carried: llama.cpp adds this vector at every token, as if the gate were "
            "always open (MAT-Steer's 'uniform gates' variant), and without MAT-Steer's norm preservation. Expect a "
            "stronger, less selective edit than the steerer makes; start with a small --control-vector-scaled value.")


def _check(steerer: Steerer, manifest: Mapping[str, Any], attribute: str, multiplier: float) -> tuple[Site, int]:
    """The steerer's site and the attribute's row, or a :class:`ConfigError` naming the problem and the fix."""
    site = Site.from_dict(dict(manifest["site"]))
    if site.component != "residual":
        raise ConfigError(
            f"This steerer acts at {site} (component {site.component!r}), but llama.cpp control vectors are added to "
            "the residual stream (the output of a decoder block) only. Train a steerer at Site(layer, 'residual') "
            "to export it.")
    if site.layer < 1:
        raise ConfigError(
            f"This steerer acts at the output of decoder block {site.layer}; llama.cpp keeps no control-vector slot "
            "for block 0 (it refuses direction.0). Train a steerer at layer 1 or above to export it.")
    if attribute not in steerer.attributes:
        raise ConfigError(f"Unknown attribute {attribute!r}; this steerer has {steerer.attributes}. Pass one of those.")
    if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or not math.isfinite(multiplier):
        raise ConfigError(f"multiplier must be a finite number, got {multiplier!r}.")
    return site, steerer.attributes.index(attribute)


def export_control_vector(
    steerer: Steerer,
    manifest: Mapping[str, Any],
    attribute: str,
    out: str | Path,
    *,
    multiplier: float = 1.0,
    model_hint: str | None = None,
    warn: bool = True,
) -> ControlVectorExport:
    """Write ``multiplier · θ_attribute`` as the llama.cpp control vector file ``out`` (atomically).

    manifest: the steerer's manifest (its site decides the tensor name ``direction.{layer}``). model_hint:
    ``controlvector.model_hint`` (default: the model name in the manifest; llama.cpp does not check it).
    warn: emit a :class:`UserWarning` that the gate and norm preservation are not carried (the same note is
    stored in the file as ``general.description`` and ``matsteer.note``).
    """
    import gguf
    import numpy as np


    site, row = _check(steerer, manifest, attribute, multiplier)
    vector = (float(multiplier) * steerer.theta.detach()[row].float().cpu()).numpy().astype(np.float32)
    if not np.isfinite(vector).all():
        raise ConfigError(f"The {attribute!r} vector times {multiplier} is not finite; use a smaller multiplier.")
    model = manifest.get("model") or {}
    side = steerer.positive_sides[row]
    note = _note(attribute)
    tensor = f"direction.{site.layer}"
    out = Path(out)
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), ARCHITECTURE)
        writer.add_string("controlvector.model_hint", str(model_hint or model.get("name") or "unknown"))
        writer.add_int32("controlvector.layer_count", 1)
        writer.add_string("general.name", f"matsteer {attribute} (toward {side})")
        writer.add_string("general.description", note)
        writer.add_string("matsteer.attribute", attribute)
        writer.add_string("matsteer.positive_side", side)
        writer.add_string("matsteer.site", "residual")
        writer.add_uint32("matsteer.layer", site.layer)
        writer.add_float32("matsteer.multiplier", float(multiplier))
        writer.add_bool("matsteer.gates_carried", False)
        writer.add_bool("matsteer.norm_preserved", False)
        writer.add_string("matsteer.model", str(model.get("name", "")))
        writer.add_string("matsteer.model_hash", str(model.get("hash", "")))
        writer.add_string("matsteer.note", note)
        writer.add_tensor(tensor, vector)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    if warn:
        warnings.warn(note, UserWarning, stacklevel=2)
    return ControlVectorExport(out, tensor, attribute, site.layer, float(multiplier), note)


def export_steerer_folder(steerer_dir: str | Path, attribute: str, out: str | Path, **options: Any
                          ) -> ControlVectorExport:
    """:func:`export_control_vector` for a saved steerer folder (loaded without unpickling)."""

    warn = options.pop("warn", True)
    steerer, manifest = load_steerer(steerer_dir)
    done = export_control_vector(steerer, manifest, attribute, out, warn=False, **options)
    if warn:
        warnings.warn(done.note, UserWarning, stacklevel=2)
    return done
