"""One configuration's k seeds folded into one checkpoint whose logits are the seeds' mean logits.

Each member is 784 -> H -> 10: logits_i(x) = W2_i act(W1_i x + b1_i) + b2_i. The activation acts unit by
unit, so stacking the members' hidden layers side by side gives one network of k*H units, and

    mean_i logits_i(x) = [W2_1/k ... W2_k/k] act([W1_1; ...; W1_k] x + [b1_1; ...; b1_k]) + mean_i b2_i

exactly (dropout is the identity at inference). `fold` builds that network in float64; the saved file
holds float32 like every checkpoint, so it is exact up to float32 rounding of the weights, as any
checkpoint is. The result is an ordinary checkpoint (checkpoint.FORMAT, fc1/fc2 keys, a RunConfig dict
with hidden_size = k*H): `torch.load(weights_only=True)`, `load_checkpoint`, `serving` and MLflow
export read it unchanged.

Where the fold says what it is: config["seed"] is the first member's (a RunConfig needs one seed); the
members (their seeds, their own metrics, and whatever the caller passes to describe them, e.g. run ids)
are in metrics["ensemble"]. The fold's own metrics are not the members': `fold` leaves them out and
`score` computes them on the validation and test splits, as `cli.py best` re-checks any checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fmnist_core import data as fdata
from fmnist_core import serving
from fmnist_core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fmnist_core.config import DEFAULT_OBJECTIVE, ConfigError, Objective, RunConfig

ENSEMBLE_KEY = "ensemble"  # metrics[ENSEMBLE_KEY]: what the fold is made of (not a number: not for MLflow)
STATE_KEYS = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
_PLAIN = (str, int, float, bool, type(None))  # a member description's values: weights_only reads them


def load_members(paths: Sequence[str | os.PathLike]) -> list[Checkpoint]:
    """The members' checkpoint files, each through `load_checkpoint` (weights_only=True)."""
    return [load_checkpoint(path) for path in paths]


def fold(members: Sequence[Checkpoint],
         descriptions: Sequence[Mapping[str, Any]] | None = None) -> Checkpoint:
    """One checkpoint of k*H hidden units whose logits are the mean of the k members' logits.

    `members`: k >= 2 checkpoints of one configuration that differ in their seed only.
    `descriptions`: one mapping per member, in the same order, of plain values (str, int, float, bool,
    None) kept in metrics["ensemble"]["members"], e.g. {"run_id": ..., "run_name": ...}; a "seed" in it
    must be the member's. The state dict is float64 (saving writes float32). The metrics hold only the
    "ensemble" block: `score` adds the fold's own. Anything that cannot be folded exactly, or is not one
    configuration's seeds, raises ConfigError.
    """
    members = list(members)
    if len(members) < 2:
        raise ConfigError(f"an ensemble needs at least 2 members, got {len(members)}: pass the checkpoints "
                          "of two or more seeds of the configuration")
    descriptions = [dict(d) for d in descriptions] if descriptions is not None else [{} for _ in members]
    if len(descriptions) != len(members):
        raise ConfigError(f"{len(descriptions)} member descriptions for {len(members)} members: pass one per "
                          "member, in the same order")
    for i, member in enumerate(members):
        _check_foldable(member, i)
    _check_one_configuration(members)
    seeds = [int(member.config["seed"]) for member in members]
    for i, description in enumerate(descriptions):
        _check_description(description, i, seeds[i])

    k, hidden = len(members), members[0].hidden_size
    states = [{key: member.state_dict[key].detach().to("cpu", torch.float64) for key in STATE_KEYS}
              for member in members]
    state = {"fc1.weight": torch.cat([s["fc1.weight"] for s in states], 0),
             "fc1.bias": torch.cat([s["fc1.bias"] for s in states], 0),
             "fc2.weight": torch.cat([s["fc2.weight"] for s in states], 1) / k,
             "fc2.bias": torch.stack([s["fc2.bias"] for s in states]).mean(0)}
    config = {**members[0].config, "hidden_size": k * hidden}
    RunConfig.from_dict(config, source="the folded checkpoint's config")  # still a valid RunConfig
    block = {"k": k, "member_hidden_size": hidden, "seeds": seeds,
             "members": [{**description, "seed": seed, "metrics": _numbers(member.metrics)}
                         for description, seed, member in zip(descriptions, seeds, members, strict=True)]}
    return Checkpoint(state_dict=state, config=config, normalization=dict(members[0].normalization),
                      classes=tuple(members[0].classes), metrics={ENSEMBLE_KEY: block})


def score(folded: Checkpoint, splits: fdata.Splits, objective: Objective = DEFAULT_OBJECTIVE) -> Checkpoint:
    """`folded` with its own metrics: best_val_acc, best_value (the objective's metric), val_loss, test_loss,
    test_acc, computed on `splits` the way `cli.py best` re-checks a checkpoint: `serving.plain_model`
    (float32, the weights as saved) on the split renormalised to the checkpoint's normalisation.

    `splits` must hold the validation split the members were selected on: `data.load_splits(data_dir,
    val_size=config["val_size"])`. Without validation data (val_size 0) only the test metrics are kept,
    as the trainer does. There is no best_epoch: the fold was never trained, it has no epoch.
    """
    val_size = int(folded.config.get("val_size", 0))
    if splits.val_x.shape[0] != val_size:
        raise ConfigError(f"the splits hold {splits.val_x.shape[0]} validation images, but the members were "
                          f"selected on {val_size}: load them with data.load_splits(val_size={val_size})")
    model = serving.plain_model(folded.state_dict, folded.config.get("activation"))
    metrics: dict[str, Any] = {}
    if val_size:
        validation = _evaluate(model, folded, splits.val_x, splits.val_y, splits)
        metrics["best_val_acc"], metrics["val_loss"] = validation.accuracy, validation.loss
        metrics["best_value"] = validation.accuracy if objective.metric == "val_acc" else validation.loss
    test = _evaluate(model, folded, splits.test_x, splits.test_y, splits)
    metrics["test_loss"], metrics["test_acc"] = test.loss, test.accuracy
    if ENSEMBLE_KEY in folded.metrics:
        metrics[ENSEMBLE_KEY] = folded.metrics[ENSEMBLE_KEY]
    return replace(folded, metrics=metrics)


def save(checkpoint: Checkpoint, path: str | os.PathLike) -> Path:
    """Write a (folded) checkpoint with `checkpoint.save_checkpoint`: the one format, float32, atomic."""
    return save_checkpoint(path, state_dict=checkpoint.state_dict, config=checkpoint.config,
                           normalization=checkpoint.normalization, classes=checkpoint.classes,
                           metrics=checkpoint.metrics).path


def fold_files(paths: Sequence[str | os.PathLike], out: str | os.PathLike, splits: fdata.Splits, *,
               descriptions: Sequence[Mapping[str, Any]] | None = None,
               objective: Objective = DEFAULT_OBJECTIVE) -> tuple[Checkpoint, Path]:
    """load_members -> fold -> score -> save: the scored fold and where it was written."""
    folded = score(fold(load_members(paths), descriptions), splits, objective)
    return folded, save(folded, out)


def is_ensemble(checkpoint: Checkpoint) -> bool:
    return isinstance(checkpoint.metrics.get(ENSEMBLE_KEY), Mapping)


def scalar_metrics(checkpoint: Checkpoint) -> dict[str, float]:
    """The checkpoint's numeric metrics (for MLflow): everything but the ensemble block."""
    return _numbers(checkpoint.metrics)


def _evaluate(model, folded: Checkpoint, x: torch.Tensor, y: torch.Tensor,
              splits: fdata.Splits) -> serving.Evaluation:
    x = serving.renormalise(x.to("cpu"), (splits.mean, splits.std), folded.normalization)
    return serving.evaluate(model, x, y.to("cpu"))


def _check_foldable(member: Checkpoint, i: int) -> None:
    where = f"member {i + 1}"
    if set(member.state_dict) != set(STATE_KEYS):
        raise ConfigError(f"{where} has layers {sorted(member.state_dict)}: only single-hidden-layer "
                          f"MLPs ({', '.join(STATE_KEYS)}) fold exactly; pass checkpoints that "
                          "`cli.py train` wrote")
    if is_ensemble(member):
        seeds = member.metrics[ENSEMBLE_KEY].get("seeds")
        raise ConfigError(f"{where} is itself an ensemble (of seeds {seeds}): fold the seeds' own "
                          "checkpoints instead")
    for key in ("hidden_size", "activation", "seed"):
        if key not in member.config:
            raise ConfigError(f"{where}'s config has no {key}: pass checkpoints that `cli.py train` wrote")
    if member.hidden_size != member.config["hidden_size"]:
        raise ConfigError(f"{where} holds {member.hidden_size} hidden units but its config says "
                          f"{member.config['hidden_size']}: the file is inconsistent; use the run's own "
                          "checkpoint")
    RunConfig.from_dict(member.config, source=f"{where}'s config")


def _check_one_configuration(members: list[Checkpoint]) -> None:
    first = members[0]
    for i, member in enumerate(members[1:], start=2):
        keys = set(first.config) | set(member.config)
        differ = sorted(k for k in keys - {"seed"} if first.config.get(k) != member.config.get(k))
        if differ:
            shown = ", ".join(f"{k} {first.config.get(k)!r} vs {member.config.get(k)!r}" for k in differ)
            raise ConfigError(f"members 1 and {i} differ in more than the seed ({shown}): fold the seeds of "
                              "one configuration only")
        if member.normalization != first.normalization or tuple(member.classes) != tuple(first.classes):
            raise ConfigError(f"members 1 and {i} differ in their normalisation or class names: fold "
                              "checkpoints trained on the same data only")
    seeds = [member.config["seed"] for member in members]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"seed(s) {', '.join(map(str, repeated))} appear more than once: pass each seed's "
                          "checkpoint once")


def _check_description(description: dict[str, Any], i: int, seed: int) -> None:
    for key, value in description.items():
        if not isinstance(key, str) or not isinstance(value, _PLAIN):
            raise ConfigError(f"member {i + 1}'s description {key!r}: {value!r} is not plain data: pass "
                              "strings and numbers (a checkpoint holds nothing that could run code)")
    if "seed" in description and description["seed"] != seed:
        raise ConfigError(f"member {i + 1} is described as seed {description['seed']!r} but its checkpoint "
                          f"has seed {seed}: pass the descriptions in the order of the checkpoints")
    if "metrics" in description:
        raise ConfigError(f"member {i + 1}'s description has a 'metrics' key: the fold records the member's "
                          "metrics itself; rename it")


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
