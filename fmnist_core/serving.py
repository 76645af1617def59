"""Using a trained model: load it, score it, predict images, shape it for serving.

Every path from a file to a model goes through `checkpoint.load_checkpoint`
(`torch.load(weights_only=True)`), so `best`, `evaluate` and `predict` refuse a file
crafted to run code before any of its code runs. The model is a plain
`nn.Sequential(Linear, activation, Linear)`: running it needs torch only, not this project.

Two input conventions, kept apart by name:
- `plain_model` takes normalised pixels, (x/255 - mean)/std, like the trainer and the splits;
- `serving_model` takes raw pixel values 0..255 and returns class probabilities. It folds
  the normalisation into the first layer and appends a softmax, so that a client of
  `mlflow models serve` sends an image as it is, with no constants to copy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fmnist_core.activations import ACTIVATIONS
from fmnist_core.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from fmnist_core.data import IMAGE_SIDE, INPUT_SIZE, NUM_CLASSES, DataError, load_splits
from fmnist_core.learner import EVAL_CHUNK
from fmnist_core.metrics import loss_and_correct

# Checkpoint keys (nn.Linear names of TorchMLP) -> nn.Sequential keys.
SEQUENTIAL_KEYS = {"fc1.weight": "0.weight", "fc1.bias": "0.bias",
                   "fc2.weight": "2.weight", "fc2.bias": "2.bias"}


def plain_model(state_dict: dict[str, torch.Tensor], activation: str) -> nn.Sequential:
    """nn.Sequential(Linear(784, H), activation, Linear(H, 10)) holding a copy of `state_dict`, in eval mode.

    Dropout is absent: at inference it is the identity.
    """
    if activation not in ACTIVATIONS:
        raise CheckpointError(f"unknown activation {activation!r} in checkpoint config")
    hidden = state_dict["fc1.weight"].shape[0]
    # Built on the meta device, so nn.Linear's own init neither runs nor moves the global RNG.
    model = nn.Sequential(nn.Linear(INPUT_SIZE, hidden, device="meta"), ACTIVATIONS[activation].module(),
                          nn.Linear(hidden, NUM_CLASSES, device="meta"))
    renamed = {SEQUENTIAL_KEYS[k]: v.detach().to("cpu", torch.float32).clone() for k, v in state_dict.items()}
    model.load_state_dict(renamed, assign=True)
    return model.eval()


def load_model(path: str | os.PathLike) -> tuple[nn.Sequential, Checkpoint]:
    """The plain model of a checkpoint file, and the checkpoint; foreign files raise CheckpointError."""
    checkpoint = load_checkpoint(path)
    activation = checkpoint.config.get("activation")
    return plain_model(checkpoint.state_dict, activation), checkpoint


def serving_model(checkpoint: Checkpoint) -> nn.Sequential:
    """Pixels 0..255 [N, 784] -> class probabilities [N, 10], with the normalisation folded into fc1.

    With x = (p/255 - mean)/std:  W1 x + b1 = (W1 / (255 std)) p + (b1 - (mean/std) W1 1).
    """
    mean, std = checkpoint.normalization["mean"], checkpoint.normalization["std"]
    weight = checkpoint.state_dict["fc1.weight"].double()
    folded = dict(checkpoint.state_dict)
    folded["fc1.weight"] = (weight / (255.0 * std)).float()
    folded["fc1.bias"] = (checkpoint.state_dict["fc1.bias"].double() - (mean / std) * weight.sum(1)).float()
    model = plain_model(folded, checkpoint.config.get("activation"))
    return nn.Sequential(*model, nn.Softmax(dim=-1)).eval()


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Model outputs for x [N, 784], computed in chunks, on the CPU."""
    x = x.to("cpu", torch.float32)
    chunks = [model(x[start:start + EVAL_CHUNK]) for start in range(0, x.shape[0], EVAL_CHUNK)]
    return torch.cat(chunks) if chunks else torch.empty(0, NUM_CLASSES)


@dataclass(frozen=True)
class Evaluation:
    loss: float  # mean cross-entropy
    accuracy: float
    confusion: torch.Tensor  # int64 [10, 10]: row = true class, column = predicted class
    predictions: torch.Tensor  # int64 [N]

    def per_class_accuracy(self) -> list[float]:
        """Recall of each class: correct predictions of class c / samples of class c (NaN if none)."""
        totals = self.confusion.sum(1).double()
        return (self.confusion.diagonal().double() / totals).tolist()


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Evaluation:
    """Loss (metrics.loss_and_correct), accuracy, confusion matrix and predictions on (x, y)."""
    if x.shape[0] == 0:
        raise ValueError("cannot evaluate on an empty split")
    logits = logits_of(model, x)
    y = y.to("cpu")
    loss_sum, _ = loss_and_correct(logits, y)
    return evaluation_of(logits.argmax(-1), y, loss_sum.item() / len(y))


def evaluation_of(predictions: torch.Tensor, y: torch.Tensor, loss: float) -> Evaluation:
    """The Evaluation of predicted classes int64 [N] against labels y [N] (the trainer's test pass keeps
    them: a run's confusion matrix and per-class table without a second pass over the test images)."""
    predictions, y = predictions.to("cpu"), y.to("cpu")
    confusion = torch.bincount(y * NUM_CLASSES + predictions, minlength=NUM_CLASSES**2)
    return Evaluation(loss=loss, accuracy=(predictions == y).double().mean().item(),
                      confusion=confusion.reshape(NUM_CLASSES, NUM_CLASSES), predictions=predictions)


def per_class_table(evaluation: Evaluation, classes: tuple[str, ...]) -> list[dict]:
    """Rows {class, index, samples, correct, accuracy}: the per-class accuracy artifact and printout."""
    totals = evaluation.confusion.sum(1).tolist()
    hits = evaluation.confusion.diagonal().tolist()
    return [{"index": i, "class": name, "samples": totals[i], "correct": hits[i], "accuracy": accuracy}
            for i, (name, accuracy) in enumerate(zip(classes, evaluation.per_class_accuracy(), strict=True))]


class ImageError(DataError):
    """An image given to `predict` is not a 28x28 grayscale PNG; the message says what it is."""


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Pixel values 0..255 of a 28x28 8-bit grayscale PNG, as float32 [784].

    Fashion-MNIST draws the garment light on a black background (0 = background).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            image_format, mode, size = image.format, image.mode, image.size
            if image_format == "PNG" and mode == "L" and size == (IMAGE_SIDE, IMAGE_SIDE):
                pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    except (OSError, UnidentifiedImageError) as error:  # missing, unreadable or not an image at all
        reason = "not an image" if isinstance(error, UnidentifiedImageError) else error.strerror or error
        raise ImageError(f"{path}: cannot read it as a PNG image ({reason})") from None
    if image_format != "PNG":
        raise ImageError(f"{path}: is {image_format}, expected a PNG file")
    if mode != "L":
        raise ImageError(f"{path}: has mode {mode}, expected 8-bit grayscale (mode L); convert it, "
                         f"e.g. PIL: Image.open(path).convert('L')")
    if size != (IMAGE_SIDE, IMAGE_SIDE):
        raise ImageError(f"{path}: is {size[0]}x{size[1]} pixels, expected {IMAGE_SIDE}x{IMAGE_SIDE}")
    return pixels.float()


def predict_images(checkpoint: Checkpoint, paths: list[Path]) -> list[tuple[Path, str, float] | ImageError]:
    """Per image, in order: (path, class name, probability) of its most likely class, or the ImageError
    that says why it could not be read; one unreadable image does not cost the others their answer."""
    read: list[torch.Tensor | ImageError] = []
    for path in paths:
        try:
            read.append(read_image(path))
        except ImageError as error:
            read.append(error)
    good = [pixels for pixels in read if isinstance(pixels, torch.Tensor)]
    answers = iter([])
    if good:
        best, index = logits_of(serving_model(checkpoint), torch.stack(good)).max(-1)
        answers = iter(zip(index.tolist(), best.tolist(), strict=True))
    results: list[tuple[Path, str, float] | ImageError] = []
    for path, pixels in zip(paths, read, strict=True):
        if isinstance(pixels, ImageError):
            results.append(pixels)
        else:
            i, probability = next(answers)
            results.append((path, checkpoint.classes[i], probability))
    return results


def renormalise(x: torch.Tensor, source: tuple[float, float], target: dict[str, float]) -> torch.Tensor:
    """x normalised with source (mean, std) -> normalised with the checkpoint's; a no-op when they agree."""
    mean, std = source
    if (mean, std) == (target["mean"], target["std"]):
        return x
    return (x * std + mean - target["mean"]) / target["std"]


def evaluate_file(path: str | os.PathLike, data_dir=None) -> tuple[Evaluation, Checkpoint]:
    """A checkpoint file scored on the full test set."""
    model, checkpoint = load_model(path)
    splits = load_splits(data_dir, val_size=0)
    x = renormalise(splits.test_x, (splits.mean, splits.std), checkpoint.normalization)
    return evaluate(model, x, splits.test_y), checkpoint


def pixels_of(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Undo the normalisation: normalised [N, 784] -> pixel values 0..255, rounded, float32."""
    return ((x.to("cpu", torch.float32) * std + mean) * 255.0).round().clamp(0, 255)
