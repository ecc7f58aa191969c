"""Adam's coordinates: θ', W_z, b_z as views of one flat buffer, their map to the steerer's parameters, one Adam kernel.

Adam works on a reparametrisation of the steerer (:func:`reparametrisation`): gates over per-dimension z-scores
and θ scaled to the activations' units. :class:`FlatParams` holds them in one buffer and maps values and
gradients between the two; :class:`FlatAdam` updates the buffer with one fused kernel per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch

from matsteer.core.attributes import AttributeData
from matsteer.core.config import TrainConfig
from matsteer.core.kernel import activation_moments
from matsteer.core.steerer import Steerer


class FlatParams:
    """Adam's coordinates (θ', W_z, b_z) as views of one flat buffer, so one Adam kernel updates all of them.

    ``gate_map`` and ``theta_scale`` map them to the steerer's parameters (see :func:`reparametrisation`).
    """

    def __init__(self, steerer: Steerer, gate_map: tuple[torch.Tensor, torch.Tensor] | None,
                 theta_scale: float) -> None:
        self.gate_map, self.theta_scale = gate_map, theta_scale
        self.T, self.d = steerer.num_attributes, steerer.d
        self.flat = torch.nn.Parameter(torch.cat(
            [steerer.theta.detach().reshape(-1) / theta_scale, steerer.gate_weight.detach().reshape(-1),
             steerer.gate_bias.detach()]
        ))
        self.flat.grad = torch.zeros_like(self.flat)
        self.theta_p, self.weight, self.bias = self.views(self.flat)

    def views(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """θ' ``[T, d]``, W_z ``[T, d]`` and b_z ``[T]`` as views of ``flat``."""
        T, d = self.T, self.d
        return flat[: T * d].view(T, d), flat[T * d : 2 * T * d].view(T, d), flat[2 * T * d :]

    def raw_gate(self) -> tuple[torch.Tensor, torch.Tensor]:
        return raw_gate(self.weight, self.bias, self.gate_map)

    def set_grad(self, g_theta: torch.Tensor, g_weight: torch.Tensor, g_bias: torch.Tensor) -> None:
        """Write the gradient for (θ, W, b) of the steerer's parameters into ``flat.grad`` in Adam's coordinates."""
        gate_map = self.gate_map
        if gate_map is not None:  # chain rule through W = W_z / s, b = b_z - W·μ
            g_weight = (g_weight - g_bias.unsqueeze(1) * gate_map[1]) * gate_map[0]
        if self.theta_scale != 1.0:
            g_theta = g_theta * self.theta_scale
        torch.cat([g_theta.view(-1), g_weight.view(-1), g_bias], out=self.flat.grad)

    def add_gate_grad(self, g_weight: torch.Tensor, g_bias: torch.Tensor) -> None:
        """Add a gradient for the steerer's (W ``[T, d]``, b ``[T]``) to ``flat.grad``, mapped to Adam's coordinates
        as :meth:`set_grad` maps it (a term outside the objective, e.g. the background gate term)."""
        if self.gate_map is not None:
            g_weight = (g_weight - g_bias.unsqueeze(1) * self.gate_map[1]) * self.gate_map[0]
        grad = cast(torch.Tensor, self.flat.grad)
        T, d = self.T, self.d
        grad[T * d : 2 * T * d].view(T, d).add_(g_weight)
        grad[2 * T * d :].add_(g_bias)

    def write_to(self, steerer: Steerer) -> None:
        """Copy the trained parameters, mapped back to raw space, into ``steerer``."""
        w_raw, b_raw = self.raw_gate()
        steerer.theta.copy_(self.theta_p * self.theta_scale)
        steerer.gate_weight.copy_(w_raw)
        steerer.gate_bias.copy_(b_raw)


def reparametrisation(
    config: TrainConfig, data: Sequence[AttributeData], device: torch.device
) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, float]:
    """``(gate_map, theta_scale)``: how Adam's coordinates map to the steerer's parameters.

    Standardised gate input: Adam works on gates over z-scores (W_z, b_z); each step maps them to the raw-space
    gate the objective uses (W = W_z / s, b = b_z - W·μ, ``gate_map = (1/s [d], μ [d])``) and maps the gradients
    back. Same objective, better conditioned steps: a raw activation of norm ~150 moves a gate logit by ~3 per Adam
    step. ``theta_scale`` c: θ = c·θ' with Adam on θ', the same as giving θ its own learning rate c·lr inside one
    flat buffer and one Adam step.
    """
    moments = activation_moments(data) if "std" == config.theta_lr or config.gate_input == "standardized" else None
    gate_map = None
    if config.gate_input == "standardized" and moments is not None:
        mu, sd = moments
        gate_map = ((1.0 / sd).to(device, torch.float32), mu.to(device, torch.float32))
    if config.theta_lr is None:
        return gate_map, 1.0
    if config.theta_lr == "std" and moments is not None:
        return gate_map, float(moments[1].pow(2).mean().sqrt())
    return gate_map, float(config.theta_lr) / config.lr


class FlatAdam:
    """torch's fused Adam kernel (``torch._fused_adam_``, what ``torch.optim.Adam(fused=True)`` runs: one kernel per
    step) on one flat parameter, without the ``torch.optim`` class, whose constructor imports ``torch._dynamo``: about
    3 s of a 15 s training process here. β = (0.9, 0.999), ε = 1e-8, no weight decay: Adam's defaults. Falls back to
    ``torch.optim.Adam(fused=True)`` where the kernel is missing."""

    def __init__(self, param: torch.Tensor, lr: float) -> None:
        self.param, self.lr = param, float(lr)
        self._fallback = None if hasattr(torch, "_fused_adam_") else torch.optim.Adam([param], lr=lr, fused=True)
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(param), torch.zeros_like(param)
        self.steps = torch.zeros((), dtype=torch.float32, device=param.device)  # as torch.optim keeps it when fused

    def step(self) -> None:
        if self._fallback is not None:
            self._fallback.step()
            return
        with torch.no_grad():
            self.steps += 1
            torch._fused_adam_([self.param], [cast(torch.Tensor, self.param.grad)], [self.exp_avg], [self.exp_avg_sq], [], [self.steps],
                               lr=self.lr, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False,
                               maximize=False)


def raw_gate(
    weight: torch.Tensor, bias: torch.Tensor, gate_map: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw-space gate ``(W [T, d], b [T])`` of a gate trained on z-scores (``gate_map = (1/s [d], μ [d])``)."""
    if gate_map is None:
        return weight, bias
    w = weight * gate_map[0]
    return w, bias - w @ gate_map[1]
