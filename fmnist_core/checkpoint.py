"""Checkpoint files that anyone can load without our code.

A checkpoint is a plain dict saved with `torch.save`:

    state_dict     nn.Linear key names and shapes: fc1.weight [H,784], fc1.bias [H],
                   fc2.weight [10,H], fc2.bias [10] (float32, CPU)
    config         the RunConfig as a plain dict
    normalization  {"mean": float, "std": float}: apply (x/255 - mean)/std to [0,255] pixels
    classes        the ten class names, index = label
    metrics        final metrics (best_epoch, test_loss, test_acc; best_val_acc, best_value
                   only when the run had validation data to select its epoch on)
    format         FORMAT, so a reader can tell what it holds

`torch.load(path, weights_only=True)` reads it; our loader uses nothing else, so a file
crafted to run code when unpickled is refused before any of its code runs.

Both ways in check a checkpoint once: `save_checkpoint` before it writes, and returns the `Checkpoint`
it wrote, so that whoever goes on with it (a run's log: its test predictions, its upload) need not read
the file back; `load_checkpoint` after it reads.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fmnist_core.config import RunConfig, first_line
from fmnist_core.data import INPUT_SIZE, NUM_CLASSES

FORMAT = "fmnist-mlp-checkpoint/1"


class CheckpointError(ValueError):
    """The file is not a checkpoint we wrote (or it is damaged); we refuse to use it."""


@dataclass(frozen=True)
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    normalization: dict[str, float]
    classes: tuple[str, ...]
    metrics: dict[str, Any]
    # The file it was written to or read from (a download's may be gone since); None: made in memory.
    path: Path | None = None

    @property
    def hidden_size(self) -> int:
        return int(self.state_dict["fc1.weight"].shape[0])


CHECKPOINT_DIR = Path("checkpoints")  # `cli.py train` writes here unless --checkpoint says where


def default_path(config: RunConfig) -> Path:
    """checkpoints/<impl>-h<hidden>-seed<seed>-<time>.pt for a RunConfig."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return CHECKPOINT_DIR / f"{config.impl}-h{config.hidden_size}-seed{config.seed}-{stamp}.pt"


def save_checkpoint(
    path: str | os.PathLike,
    *,
    state_dict: dict[str, torch.Tensor],
    config: dict[str, Any],
    normalization: dict[str, float],
    classes: tuple[str, ...],
    metrics: dict[str, Any],
) -> Checkpoint:
    """Check, then write atomically: a temp file in the same directory, then rename over `path`.
    Returns the checkpoint as written (float32 CPU tensors, plain numbers), its `path` the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "state_dict": {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict.items()},
        "config": dict(config),
        "normalization": {"mean": float(normalization["mean"]), "std": float(normalization["std"])},
        "classes": list(classes),
        "metrics": {k: _plain(v) for k, v in metrics.items()},
    }
    checkpoint = _checked(payload, path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return checkpoint


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load and check a checkpoint; anything else raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise about a file we refuse
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read it: {error.strerror or first_line(error)}") from None
    except Exception as error:  # torch.load fails on a foreign file in a dozen ways, each one a refusal
        raise CheckpointError(_unreadable(path, error)) from None
    return _checked(payload, path)


def _checked(payload: Any, path: Path) -> Checkpoint:
    """The Checkpoint of a payload as `torch.save` writes it, once `_validate` has accepted it."""
    _validate(payload, path)
    return Checkpoint(
        state_dict=payload["state_dict"],
        config=payload["config"],
        normalization=payload["normalization"],
        classes=tuple(payload["classes"]),
        metrics=payload["metrics"],
        path=path,
    )


def _unreadable(path: Path, error: Exception) -> str:
    """Why torch.load(weights_only=True) could not read `path`, in one sentence.

    A pickle naming a Python object (a class, a function such as exec) is refused before that object
    is built; anything else it raised (KeyError, EOFError, UnpicklingError "Unsupported operand",
    RuntimeError from the zip reader, ...) means the file is not something torch.save wrote, or is cut short.
    """
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(error)) if isinstance(
        error, pickle.UnpicklingError) else None
    if unsafe:
        return (f"{path}: refused: not a plain-data checkpoint: it asks to load the Python object "
                f"{unsafe.group(1)}, which could run code; an fmnist checkpoint holds only tensors, "
                "numbers and strings")
    return (f"{path}: not a checkpoint: torch.load cannot read it ({type(error).__name__}), so torch.save "
            "did not write it or it is cut short; expected an fmnist checkpoint (.pt), as `cli.py train` "
            "and `cli.py best` write")


def _validate(payload: Any, path: Path) -> None:
    def fail(reason: str) -> None:
        raise CheckpointError(f"{path}: not an fmnist checkpoint: {reason}")

    if not isinstance(payload, dict):
        fail(f"expected a dict, found {type(payload).__name__}")
    if payload.get("format") != FORMAT:
        fail(f"format is {payload.get('format')!r}, expected {FORMAT!r}")
    for key, kind in (("state_dict", dict), ("config", dict), ("normalization", dict),
                      ("classes", (list, tuple)), ("metrics", dict)):
        if not isinstance(payload.get(key), kind):
            fail(f"missing or malformed {key!r}")
    state = payload["state_dict"]
    if set(state) != {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}:
        fail(f"state_dict keys {sorted(state)} are not fc1/fc2 weight and bias")
    if not all(isinstance(t, torch.Tensor) for t in state.values()):
        fail("state_dict values must be tensors")
    hidden = state["fc1.weight"].shape[0] if state["fc1.weight"].dim() == 2 else -1
    expected = {"fc1.weight": (hidden, INPUT_SIZE), "fc1.bias": (hidden,),
                "fc2.weight": (NUM_CLASSES, hidden), "fc2.bias": (NUM_CLASSES,)}
    for key, shape in expected.items():
        if hidden < 1 or tuple(state[key].shape) != shape:
            fail(f"{key} has shape {tuple(state[key].shape)}, expected {shape}")
        if not torch.isfinite(state[key]).all():
            fail(f"{key} holds NaN or Inf")
    if len(payload["classes"]) != NUM_CLASSES:
        fail(f"{len(payload['classes'])} class names, expected {NUM_CLASSES}")
    if not {"mean", "std"} <= set(payload["normalization"]):
        fail("normalization needs mean and std")


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item()
    return value
