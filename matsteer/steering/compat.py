"""The reference code's run-time names: ``MATIntervener`` and ``create_mat_pyvene_config``, for its README flow.

::

    mat_intervener = MATIntervener.load_from_checkpoint("results/steerer", multiplier=1.0)
    pv_config = create_mat_pyvene_config([14], mat_intervener)
    intervenable_model = pv.IntervenableModel(pv_config, model)
    _, outputs = intervenable_model.generate(**inputs, max_new_tokens=32)

The last call is pyvene's own class with the reference's call form, which pyvene 0.1.8 does not accept; it works
through :func:`matsteer.steering._pyvene.install_generate_shim`, which these names install.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from matsteer.activations.sites import COMPONENTS, Site
from matsteer.core.steerer import Steerer
from matsteer.errors import ConfigError
from matsteer.steering._pyvene import import_pyvene, install_generate_shim
from matsteer.steering.intervention import MatSteerIntervention, SteerSettings
from matsteer.store.artifacts import load_steerer
from matsteer.store.reference import import_reference_checkpoint

if TYPE_CHECKING:
    import pyvene as pv
else:
    pv = import_pyvene()  # without its "nnsight is not detected" notice


class MATIntervener(MatSteerIntervention):
    """The reference code's run-time intervener, by name: ``MATIntervener.load_from_checkpoint(path, multiplier)``.

    Unlike the reference (which edited only ``b[0, -1]``, the last position of batch row 0, in each forward call),
    this steers every token of every row, each with its own gates, and computes in float32 (fp16 models work).
    Use it with :func:`create_mat_pyvene_config` and ``pv.IntervenableModel(cfg, model).generate(**inputs, ...)``.
    Pad-awareness and the position policies need the call context: :func:`~matsteer.steering.session.steer` provides it, and so does the
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
            steerer, manifest = load_steerer(path)
            site = Site.from_dict(manifest["site"]) if "site" in manifest else None
        else:
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
    install_generate_shim(MatSteerIntervention)
    return pv.IntervenableConfig(reps)
