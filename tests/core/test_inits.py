"""Init schemes: shapes, the spread their formulas promise, seeding; and the dropout streams."""

from __future__ import annotations

import math

import pytest
import torch

from fmnist_core import inits
from fmnist_core.config import INITS as CONFIG_INITS


def draw(scheme: str, fan_in: int = 784, fan_out: int = 1024, *, activation: str = "relu",
         scale: float = 0.05, seed: int = 0) -> torch.Tensor:
    return inits.init_weight(scheme, fan_in, fan_out, activation=activation, scale=scale,
                             generator=torch.Generator().manual_seed(seed))


def test_every_config_scheme_exists_and_has_nn_linear_shape():
    assert set(inits.INITS) == set(CONFIG_INITS)
    for scheme in inits.INITS:
        weight = draw(scheme, 784, 7)
        assert weight.shape == (7, 784) and weight.dtype == torch.float32


def test_zeros_and_constant_are_exact():
    assert torch.equal(draw("zeros"), torch.zeros(1024, 784))
    assert torch.equal(draw("constant", scale=0.3), torch.full((1024, 784), 0.3))


# scheme, activation, expected std; uniform U(-a, a) has std a / sqrt(3)
SPREADS = [
    ("normal", "relu", 0.05),
    ("uniform", "relu", 0.05 / math.sqrt(3)),
    ("xavier_uniform", "tanh", 5 / 3 * math.sqrt(6 / (784 + 1024)) / math.sqrt(3)),
    ("xavier_normal", "sigmoid", math.sqrt(2 / (784 + 1024))),
    ("lecun_normal", "relu", math.sqrt(1 / 784)),
    ("kaiming_uniform", "relu", math.sqrt(2) * math.sqrt(3 / 784) / math.sqrt(3)),
    ("kaiming_normal", "relu", math.sqrt(2 / 784)),
    ("kaiming_normal", "leaky_relu", math.sqrt(2 / (1 + 0.01**2)) / math.sqrt(784)),
    ("kaiming_normal", "tanh", 5 / 3 / math.sqrt(784)),
    ("kaiming_normal", "silu", math.sqrt(2 / 784)),  # relu's gain, see activation_gain
    ("kaiming_normal", "elu", math.sqrt(2 / 784)),
]


@pytest.mark.parametrize(("scheme", "activation", "std"), SPREADS)
def test_empirical_std_matches_formula(scheme, activation, std):
    weight = draw(scheme, activation=activation)
    assert abs(weight.mean().item()) < 0.02 * std
    assert weight.std().item() == pytest.approx(std, rel=0.05)


@pytest.mark.parametrize(("scheme", "bound"), [
    ("uniform", 0.05),
    ("xavier_uniform", math.sqrt(6 / (784 + 1024))),  # sigmoid gain 1
    ("kaiming_uniform", math.sqrt(2) * math.sqrt(3 / 784)),
])
def test_uniform_schemes_fill_their_bounds(scheme, bound):
    weight = draw(scheme, activation="relu" if scheme != "xavier_uniform" else "sigmoid")
    assert weight.abs().max().item() <= bound
    assert weight.abs().max().item() > 0.999 * bound


def test_seeded_reproducibility():
    for scheme in inits.INITS:
        assert torch.equal(draw(scheme, seed=3), draw(scheme, seed=3))
    assert not torch.equal(draw("kaiming_uniform", seed=3), draw("kaiming_uniform", seed=4))
    a = inits.initial_state(16, activation="tanh", init="xavier_normal", scale=0.0, seed=11)
    b = inits.initial_state(16, activation="tanh", init="xavier_normal", scale=0.0, seed=11)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_initial_state_layout_and_zero_biases():
    state = inits.initial_state(5, activation="relu", init="kaiming_normal", scale=0.0, seed=0)
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "fc1.weight": (5, 784), "fc1.bias": (5,), "fc2.weight": (10, 5), "fc2.bias": (10,)}
    assert not state["fc1.bias"].any() and not state["fc2.bias"].any()
    assert all(v.dtype == torch.float32 for v in state.values())


def test_initial_state_leaves_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    inits.initial_state(8, activation="relu", init="kaiming_uniform", scale=0.0, seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_unknown_scheme_lists_choices():
    with pytest.raises(ValueError, match="kaiming_normal"):
        draw("he_normal")


def test_dropout_masks_scale_and_rate_and_stream_independence():
    gens = inits.dropout_generators([0, 1], torch.device("cpu"))
    masks = inits.dropout_masks([0.25, 0.0], 400, 500, gens, device=torch.device("cpu"), dtype=torch.float64)
    kept = masks[0] != 0
    assert torch.equal(masks[0][kept], torch.full_like(masks[0][kept], 1 / 0.75))
    assert kept.double().mean().item() == pytest.approx(0.75, abs=0.01)
    assert torch.equal(masks[1], torch.ones(400, 500, dtype=torch.float64))
    alone = inits.dropout_masks([0.25], 400, 500, inits.dropout_generators([0], torch.device("cpu")),
                                device=torch.device("cpu"), dtype=torch.float32)
    assert torch.equal(alone[0] != 0, kept)  # same member, same units, whatever the dtype or company
    none = inits.dropout_masks([0.0, 0.0], 4, 5, gens, device=torch.device("cpu"), dtype=torch.float32)
    assert none is None
