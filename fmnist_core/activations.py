"""The hidden layer's activation functions: one table for every model that has a hidden layer.

`ACTIVATIONS[name]` holds, for each name in `config.ACTIVATIONS`:
- `function`: h = f(z), a torch function (the torch MLP, and the manual MLP's forward);
- `derivative`: f'(z), given z and h = f(z) (the manual MLP's hand-written backward);
- `module`: a factory of the nn.Module that computes the same f, with the same constants
  (for nn.Sequential models such as the one `serving` builds from a checkpoint).

Constants: leaky_relu has slope 0.01 for z < 0 and elu has alpha 1, both torch's defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.01  # leaky_relu's slope for z < 0


@dataclass(frozen=True)
class Activation:
    function: Callable[[torch.Tensor], torch.Tensor]  # h = f(z)
    derivative: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # f'(z), given (z, h)
    module: Callable[[], nn.Module]  # an nn.Module computing f


def _silu_derivative(z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


ACTIVATIONS: dict[str, Activation] = {
    # h = max(z, 0);                    dh/dz = 1[z > 0] = sign(h), as h >= 0
    # (sign: a comparison's bool result and its conversion cost ~10x more on the CPU)
    "relu": Activation(F.relu, lambda z, h: torch.sign(h), nn.ReLU),
    # h = z if z > 0 else 0.01 z;       dh/dz = 1 if z > 0 else 0.01
    "leaky_relu": Activation(partial(F.leaky_relu, negative_slope=LEAKY_SLOPE),
                             lambda z, h: torch.where(z > 0, torch.ones_like(z), LEAKY_SLOPE),
                             partial(nn.LeakyReLU, negative_slope=LEAKY_SLOPE)),
    # h = tanh(z);                      dh/dz = 1 - h^2
    "tanh": Activation(torch.tanh, lambda z, h: 1 - h * h, nn.Tanh),
    # h = s(z) = 1 / (1 + e^-z);        dh/dz = s (1 - s)
    "sigmoid": Activation(torch.sigmoid, lambda z, h: h * (1 - h), nn.Sigmoid),
    # h = z if z > 0 else e^z - 1;      dh/dz = 1 if z > 0 else e^z = h + 1   (alpha = 1)
    "elu": Activation(F.elu, lambda z, h: torch.where(z > 0, 1.0, h + 1), nn.ELU),
    # h = z s(z);                       dh/dz = s + z s (1 - s) = s (1 + z (1 - s))
    "silu": Activation(F.silu, _silu_derivative, nn.SiLU),
}


def activation(name: str) -> Activation:
    """The table's entry for `name`; an unknown name is a ValueError that lists the known ones."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]
