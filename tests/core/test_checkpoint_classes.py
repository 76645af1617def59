"""A checkpoint's class names: exactly the ten the network's outputs stand for, or it is refused.

A checkpoint with one name missing would name every prediction of the last class wrongly, or fail
with an IndexError at prediction time; checkpoint.load_checkpoint refuses it on load.
"""

import pytest
import torch

from fmnist_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fmnist_core.data import CLASSES, NUM_CLASSES

pytestmark = pytest.mark.unit


def state():
    return {"fc1.weight": torch.zeros(4, 784), "fc1.bias": torch.zeros(4),
             "fc2.weight": torch.zeros(NUM_CLASSES, 4), "fc2.bias": torch.zeros(NUM_CLASSES)}


def saved(path, classes):
    return save_checkpoint(path, state_dict=state(), config={"hidden_size": 4, "activation": "relu"},
                           classes=classes, normalization={"mean": 0.286, "std": 0.353}, metrics={}).path


@pytest.mark.parametrize("count", [0, 1, 9, 11])
def test_a_checkpoint_with_other_than_ten_class_names_is_not_written(tmp_path, count):
    names = tuple(f"class{i}" for i in range(count))
    with pytest.raises(CheckpointError, match=f"not an fmnist checkpoint: {count} class names, expected 10"):
        saved(tmp_path / "model.pt", names)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("count", [0, 1, 9, 11])
def test_a_file_with_other_than_ten_class_names_is_refused_on_load(tmp_path, count):
    """Written by something else (plain torch.save of an otherwise good checkpoint)."""
    path = saved(tmp_path / "model.pt", CLASSES)
    payload = torch.load(path, weights_only=True)
    payload["classes"] = [f"class{i}" for i in range(count)]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=f"not an fmnist checkpoint: {count} class names, expected 10"):
        load_checkpoint(path)


def test_the_ten_class_names_come_back_in_order(tmp_path):
    assert load_checkpoint(saved(tmp_path / "model.pt", CLASSES)).classes == CLASSES
