"""What a configuration costs, the formulas once: its parameters, and the training FLOPs of an epoch.

The one-hidden-layer MLP is INPUT_SIZE -> H -> NUM_CLASSES (data.py's constants). The sweep's "cheapest"
(sweeps/analysis/report.py), its cost figure and bench/speed.py's achieved GFLOP/s all read these.
"""

from __future__ import annotations

from fmnist_core.config import RunConfig
from fmnist_core.data import INPUT_SIZE, NUM_CLASSES

TRAIN_SET_IMAGES = 60_000  # Fashion-MNIST's training file; val_size of them are held out for validation


def parameter_count(hidden_size: int) -> int:
    """Weights and biases of both layers: W1 [784, H], b1 [H], W2 [H, 10], b2 [10]."""
    return INPUT_SIZE * hidden_size + hidden_size + NUM_CLASSES * hidden_size + NUM_CLASSES


def training_flops_per_image(hidden_size: int) -> int:
    """Floating-point operations to train on one image, 2 per multiply-add:
    forward  z1 = x . W1 (784 H) and z2 = h1 . W2 (H 10);
    backward dW2 = h1^T . dz2 (H 10), dh1 = dz2 . W2^T (H 10), dW1 = x^T . dz1 (784 H), and no
    gradient to the pixels (the usual "backward = 2 x forward" would count one). Biases, activations,
    the loss and the update are O(H): left out."""
    forward = 2 * (INPUT_SIZE * hidden_size + hidden_size * NUM_CLASSES)
    backward = 2 * (2 * hidden_size * NUM_CLASSES + INPUT_SIZE * hidden_size)
    return forward + backward


def training_flops(config: RunConfig) -> int:
    """One training epoch of `config`'s MLP: training_flops_per_image times the images it trains on."""
    return training_flops_per_image(config.hidden_size) * (TRAIN_SET_IMAGES - config.val_size)
