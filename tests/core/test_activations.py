"""The activation table: every configurable name, each f' against autograd's, each module against f."""

from __future__ import annotations

import math

import pytest
import torch

from fmnist_core.activations import ACTIVATIONS, activation
from fmnist_core.config import ACTIVATIONS as CONFIG_ACTIVATIONS

# f(-1) and f(2), worked out by hand: slope 0.01 for leaky_relu, alpha 1 for elu.
KNOWN_VALUES = {
    "relu": (0.0, 2.0),
    "leaky_relu": (-0.01, 2.0),
    "tanh": (math.tanh(-1), math.tanh(2)),
    "sigmoid": (1 / (1 + math.e), 1 / (1 + math.exp(-2))),
    "elu": (math.exp(-1) - 1, 2.0),
    "silu": (-1 / (1 + math.e), 2 / (1 + math.exp(-2))),
}


def test_the_table_holds_exactly_the_configurable_names():
    assert set(ACTIVATIONS) == set(CONFIG_ACTIVATIONS) == set(KNOWN_VALUES)
    with pytest.raises(ValueError, match="choose one of: relu"):
        activation("gelu")


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_function_module_and_derivative_agree(name):
    entry = ACTIVATIONS[name]
    points = torch.tensor([-1.0, 2.0], dtype=torch.float64)
    assert entry.function(points).tolist() == pytest.approx(KNOWN_VALUES[name], rel=1e-15)
    z = torch.linspace(-6, 6, 1201, dtype=torch.float64).requires_grad_(True)  # z = 0 exactly at 600
    h = entry.function(z)
    (expected,) = torch.autograd.grad(h.sum(), z)
    derivative = entry.derivative(z.detach(), h.detach())
    assert derivative.dtype == torch.float64
    torch.testing.assert_close(derivative, expected, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(entry.module()(z.detach()), h.detach(), rtol=0, atol=0)
