"""Where activations are read and edited: one ``Site`` object for extraction and for steering.

Components:
- ``residual``: the residual stream out of decoder block ``layer`` (``hidden_states[layer + 1]`` of
  ``output_hidden_states``; the reference code's features ``hidden_states[layer]`` are the output of block ``layer - 1``).
- ``attn_output``: the attention output after the output projection (``o_proj`` / ``c_proj``): the paper's site.
- ``attn_heads``: the concatenated head outputs at the output projection's *input*: the reference code's steering site.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from torch import nn

from matsteer.errors import ConfigError, ModelError

Component = Literal["residual", "attn_output", "attn_heads"]
COMPONENTS: tuple[str, ...] = ("residual", "attn_output", "attn_heads")

# Attribute paths, tried in order, that cover Llama, Mistral, Qwen2, Gemma (model.layers / self_attn / o_proj),
# GPT-2 (transformer.h / attn / c_proj), GPT-NeoX and OPT-style layouts.
_LAYER_LISTS = ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "layers", "h")
_ATTENTION = ("self_attn", "attn", "attention", "self_attention")
_OUT_PROJ = ("o_proj", "c_proj", "dense", "out_proj")


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


@dataclass(frozen=True)
class ResolvedSite:
    """A site bound to a model: the module, its path, and whether the site is its input or output."""

    site: Site
    module: nn.Module
    path: str  # e.g. "model.layers.14.self_attn.o_proj"
    io: Literal["input", "output"]

    @property
    def pyvene_component(self) -> str:
        """The component string pyvene's ``IntervenableModel`` accepts for this site."""
        return f"{self.path}.{self.io}"


@dataclass(frozen=True)
class Site:
    """A layer and a component. ``Site(14, "residual")`` is the output of block 14 (0-based)."""

    layer: int
    component: str = "residual"

    def __post_init__(self) -> None:
        if self.component not in COMPONENTS:
            raise ConfigError(f"Unknown site component {self.component!r}; choose one of {', '.join(COMPONENTS)}.")
        if not isinstance(self.layer, int) or isinstance(self.layer, bool) or self.layer < 0:
            raise ConfigError(f"Layer must be a non-negative integer, got {self.layer!r}; pass a 0-based decoder block "
                              "index.")

    def __str__(self) -> str:
        return f"layer {self.layer} {self.component}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Site:
        try:
            return cls(layer=int(data["layer"]), component=str(data["component"]))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # OverflowError: int(inf)
            raise ConfigError(f"A site needs 'layer' (int) and 'component', got {data!r}.") from exc

    def resolve(self, model: nn.Module) -> ResolvedSite:
        """Find this site's module in ``model`` (a ``*ForCausalLM`` or its base model)."""
        layers, layers_path = decoder_layers(model)
        if self.layer >= len(layers):
            raise ConfigError(
                f"Layer {self.layer} is out of range: this model has {len(layers)} layers (0..{len(layers) - 1}). "
                "Pick a layer in that range."
            )
        block = layers[self.layer]
        block_path = f"{layers_path}.{self.layer}"
        if self.component == "residual":
            return ResolvedSite(self, block, block_path, "output")
        attn_name = next((n for n in _ATTENTION if isinstance(getattr(block, n, None), nn.Module)), None)
        proj_name = None
        if attn_name is not None:
            attn = getattr(block, attn_name)
            proj_name = next((n for n in _OUT_PROJ if isinstance(getattr(attn, n, None), nn.Module)), None)
        if attn_name is None or proj_name is None:
            raise ModelError(
                f"Site {self} needs the attention output projection, but block {block_path} "
                f"({type(block).__name__}) has none of {_ATTENTION} x {_OUT_PROJ}. Use the 'residual' component (CLI: "
                "--site residual) or a layer that has attention."
            )
        module = getattr(getattr(block, attn_name), proj_name)
        path = f"{block_path}.{attn_name}.{proj_name}"
        return ResolvedSite(self, module, path, "output" if self.component == "attn_output" else "input")


def decoder_layers(model: nn.Module) -> tuple[nn.ModuleList, str]:
    """The list of decoder blocks and its dotted path inside ``model``."""
    for path in _LAYER_LISTS:
        layers = _get(model, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers, path
    raise ModelError(
        f"Cannot find the decoder layers of {type(model).__name__}: looked for {', '.join(_LAYER_LISTS)}. "
        "matsteer supports Llama, Mistral, Qwen2, Gemma, GPT-2 and GPT-NeoX style models."
    )


def num_layers(model: nn.Module) -> int:
    return len(decoder_layers(model)[0])
