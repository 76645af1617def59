"""Seeded randomness shared by both MLP implementations: initial weights and dropout masks.

Everything random about a member comes from its `RunConfig.seed` through this module, so the
manual and the torch implementation, on any device, alone or in a population, start from the
same weights and drop the same hidden units:

- initial weights are drawn on the CPU from `torch.Generator().manual_seed(seed)`
  (`initial_state`), then moved to the device;
- dropout masks come from one generator per member on the device, seeded from
  `seed + DROPOUT_SEED_OFFSET` (`dropout_generators`, `dropout_masks`).

Weights use the nn.Linear layout [fan_out, fan_in]; biases start at zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from fmnist_core.data import INPUT_SIZE, NUM_CLASSES  # the network's ends (re-exported: mlp_*.py)

# Keeps the dropout stream apart from the weight stream of the same seed.
DROPOUT_SEED_OFFSET = 1_000_003


def activation_gain(activation: str) -> float:
    """The gain torch.nn.init.calculate_gain gives for the hidden activation.

    elu and silu are not known to calculate_gain; both pass positive inputs almost unchanged
    and squash negative ones towards a small value, like relu, so they take relu's sqrt(2).
    The same gain serves both layers: fc1 feeds the activation, and fc2's inputs are the
    activation's outputs (He et al. derive the factor 2 from relu'd inputs of a layer).
    """
    if activation == "leaky_relu":
        return torch.nn.init.calculate_gain("leaky_relu", 0.01)  # sqrt(2 / (1 + 0.01^2))
    if activation in ("relu", "elu", "silu"):
        return torch.nn.init.calculate_gain("relu")  # sqrt(2)
    if activation in ("tanh", "sigmoid"):
        return torch.nn.init.calculate_gain(activation)  # tanh 5/3, sigmoid 1
    raise ValueError(f"unknown activation {activation!r}; choose one of: relu, leaky_relu, tanh, "
                     "sigmoid, elu, silu")


def _uniform(bound: float, shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    # U(-bound, bound) from U(0, 1)
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


def _normal(std: float, shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator) * std


# Each scheme: (fan_in, fan_out, gain, scale, generator) -> weight [fan_out, fan_in].
InitFn = Callable[[int, int, float, float, torch.Generator], torch.Tensor]

INITS: dict[str, InitFn] = {
    # w = 0: every hidden unit stays identical (symmetry is never broken); a baseline to show why
    "zeros": lambda fi, fo, gain, scale, g: torch.zeros(fo, fi),
    # w = scale: same symmetry problem as zeros, with a non-zero signal
    "constant": lambda fi, fo, gain, scale, g: torch.full((fo, fi), float(scale)),
    # N(0, scale^2)
    "normal": lambda fi, fo, gain, scale, g: _normal(scale, (fo, fi), g),
    # U(-scale, scale)
    "uniform": lambda fi, fo, gain, scale, g: _uniform(scale, (fo, fi), g),
    # U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))
    "xavier_uniform": lambda fi, fo, gain, scale, g: _uniform(gain * math.sqrt(6 / (fi + fo)), (fo, fi), g),
    # N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))
    "xavier_normal": lambda fi, fo, gain, scale, g: _normal(gain * math.sqrt(2 / (fi + fo)), (fo, fi), g),
    # N(0, std^2), std = sqrt(1 / fan_in); LeCun's rule has no activation gain by definition
    "lecun_normal": lambda fi, fo, gain, scale, g: _normal(math.sqrt(1 / fi), (fo, fi), g),
    # U(-a, a), a = gain * sqrt(3 / fan_in)   (fan_in mode)
    "kaiming_uniform": lambda fi, fo, gain, scale, g: _uniform(gain * math.sqrt(3 / fi), (fo, fi), g),
    # N(0, std^2), std = gain / sqrt(fan_in)   (fan_in mode)
    "kaiming_normal": lambda fi, fo, gain, scale, g: _normal(gain / math.sqrt(fi), (fo, fi), g),
}


def init_weight(
    scheme: str, fan_in: int, fan_out: int, *, activation: str, scale: float, generator: torch.Generator
) -> torch.Tensor:
    """A float32 weight [fan_out, fan_in] drawn on the CPU from `generator`."""
    if scheme not in INITS:
        raise ValueError(f"unknown init {scheme!r}; choose one of: {', '.join(INITS)}")
    weight = INITS[scheme](fan_in, fan_out, activation_gain(activation), scale, generator)
    return weight.to(torch.float32)


def initial_state(
    hidden_size: int, *, activation: str, init: str, scale: float, seed: int
) -> dict[str, torch.Tensor]:
    """Initial weights of one 784 -> hidden -> 10 MLP, keyed like TorchMLP's state_dict."""
    generator = torch.Generator().manual_seed(seed)
    fc1_weight = init_weight(init, INPUT_SIZE, hidden_size, activation=activation, scale=scale,
                             generator=generator)
    fc2_weight = init_weight(init, hidden_size, NUM_CLASSES, activation=activation, scale=scale,
                             generator=generator)
    return {
        "fc1.weight": fc1_weight,
        "fc1.bias": torch.zeros(hidden_size),
        "fc2.weight": fc2_weight,
        "fc2.bias": torch.zeros(NUM_CLASSES),
    }


def dropout_generators(seeds: Sequence[int], device: torch.device) -> list[torch.Generator]:
    """One dropout stream per member on `device`, independent of the other members."""
    return [torch.Generator(device=device).manual_seed(seed + DROPOUT_SEED_OFFSET) for seed in seeds]


def dropout_masks(
    probabilities: Sequence[float],
    batch_size: int,
    hidden_size: int,
    generators: Sequence[torch.Generator],
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """Inverted-dropout masks [P, B, H]: 0 with probability p, else 1 / (1 - p); None if no dropout.

    The uniforms are always drawn in float32, so a float64 run drops the same units; a member
    with p = 0 draws nothing, so its stream does not depend on the others.
    """
    if not any(p > 0 for p in probabilities):
        return None
    masks = torch.ones(len(probabilities), batch_size, hidden_size, device=device, dtype=dtype)
    for i, (p, generator) in enumerate(zip(probabilities, generators, strict=True)):
        if p > 0:
            keep = torch.rand(batch_size, hidden_size, generator=generator, device=device) >= p
            masks[i] = keep.to(dtype) / (1 - p)  # E[mask] = 1, so eval needs no rescaling
    return masks
