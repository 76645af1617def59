"""Folding k seeds into one checkpoint: exact mean logits, the one format, refusals, its own metrics."""

import dataclasses

import pytest
import torch
from support import synthetic_splits

from fmnist_core import ensemble, serving
from fmnist_core.checkpoint import Checkpoint, load_checkpoint
from fmnist_core.config import ConfigError, Objective, RunConfig
from fmnist_core.data import CLASSES, INPUT_SIZE, MEAN, NUM_CLASSES, STD
from fmnist_core.mlp_torch import TorchMLP
from fmnist_core.trainer import save_result, train_population

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: see tests/core/conftest.py

NORMALIZATION = {"mean": MEAN, "std": STD}


def member(seed: int, hidden: int = 5, dtype=torch.float64, **config) -> Checkpoint:
    """A checkpoint of random weights (not small: the activations must not all sit in one regime)."""
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    state = {"fc1.weight": draw(hidden, INPUT_SIZE) / 10, "fc1.bias": draw(hidden),
             "fc2.weight": draw(NUM_CLASSES, hidden), "fc2.bias": draw(NUM_CLASSES)}
    cfg = RunConfig(hidden_size=hidden, seed=seed, **config).as_dict()
    return Checkpoint(state, cfg, dict(NORMALIZATION), CLASSES,
                      {"best_epoch": 3, "best_val_acc": 0.8 + seed / 100, "test_acc": 0.7 + seed / 100})


def float64_logits(checkpoint: Checkpoint, x: torch.Tensor) -> torch.Tensor:
    """Through TorchMLP, the module whose layer names are the checkpoint format, in float64."""
    activation = checkpoint.config["activation"]
    model = TorchMLP.from_state_dict(checkpoint.state_dict, activation, dtype=torch.float64)
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.unit
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "silu", "leaky_relu", "elu"])
def test_the_fold_s_logits_are_the_mean_of_the_members_logits(activation):
    members = [member(seed, activation=activation) for seed in (3, 7, 11)]
    folded = ensemble.fold(members)
    x = torch.randn(200, INPUT_SIZE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean = torch.stack([float64_logits(m, x) for m in members]).mean(0)
    difference = (float64_logits(folded, x) - mean).abs().max().item()
    print(f"{activation}: max |fold - mean| = {difference:.2e} (logits of size {mean.abs().max():.1f})")
    assert difference < 1e-10
    assert folded.hidden_size == 15 and folded.config["hidden_size"] == 15
    assert {k: v for k, v in folded.config.items() if k != "hidden_size"} == {
        k: v for k, v in members[0].config.items() if k != "hidden_size"}


@pytest.mark.unit
def test_the_saved_fold_serves_the_mean_logits_through_the_product_s_own_paths(tmp_path):
    members = [member(seed) for seed in (0, 1, 2)]
    paths = [ensemble.save(m, tmp_path / f"seed{i}.pt") for i, m in enumerate(members)]  # float32, as trained
    path = ensemble.save(ensemble.fold(ensemble.load_members(paths)), tmp_path / "fold.pt")
    pixels = torch.randint(0, 256, (64, INPUT_SIZE), generator=torch.Generator().manual_seed(1)).float()
    x = (pixels / 255 - MEAN) / STD

    model, checkpoint = serving.load_model(path)  # what `best`, `evaluate` and the registry check use
    mean = torch.stack([serving.logits_of(serving.load_model(p)[0], x) for p in paths]).mean(0)
    assert (serving.logits_of(model, x) - mean).abs().max().item() < 1e-4  # float32 weights and sums
    probabilities = serving.logits_of(serving_model := serving.serving_model(checkpoint), pixels)
    assert torch.allclose(probabilities, mean.softmax(-1), atol=1e-5)  # raw pixels in, as `serve` gets them
    assert isinstance(serving_model[-1], torch.nn.Softmax)


@pytest.mark.unit
def test_a_saved_fold_is_an_ordinary_checkpoint(tmp_path):
    members = [member(seed, hidden=4) for seed in (5, 6, 9)]
    descriptions = [{"run_id": f"r{seed}", "run_name": f"trial-seed{seed}"} for seed in (5, 6, 9)]
    folded = ensemble.fold(members, descriptions)
    path = ensemble.save(folded, tmp_path / "fold.pt")

    raw = torch.load(path, weights_only=True)  # no project code needed
    assert raw["format"] == "fmnist-mlp-checkpoint/1"
    assert {k: tuple(v.shape) for k, v in raw["state_dict"].items()} == {
        "fc1.weight": (12, INPUT_SIZE), "fc1.bias": (12,), "fc2.weight": (NUM_CLASSES, 12),
        "fc2.bias": (NUM_CLASSES,)}
    assert all(v.dtype == torch.float32 for v in raw["state_dict"].values())
    plain = torch.nn.Sequential(torch.nn.Linear(INPUT_SIZE, 12), torch.nn.ReLU(),
                                torch.nn.Linear(12, NUM_CLASSES))
    plain.load_state_dict({serving.SEQUENTIAL_KEYS[k]: v for k, v in raw["state_dict"].items()})

    loaded = load_checkpoint(path)
    assert loaded.hidden_size == 12
    assert RunConfig.from_dict(loaded.config) == RunConfig(hidden_size=12, seed=5)  # the first member's seed
    assert ensemble.is_ensemble(loaded) and not ensemble.is_ensemble(members[0])
    block = loaded.metrics["ensemble"]
    assert (block["k"], block["member_hidden_size"], block["seeds"]) == (3, 4, [5, 6, 9])
    assert block["members"][1] == {"run_id": "r6", "run_name": "trial-seed6", "seed": 6,
                                   "metrics": members[1].metrics}
    # Not scored yet: no member's numbers stand as the fold's own.
    assert set(loaded.metrics) == {"ensemble"} and ensemble.scalar_metrics(loaded) == {}
    assert torch.equal(loaded.state_dict["fc2.bias"], folded.state_dict["fc2.bias"].float())


@pytest.mark.unit
@pytest.mark.parametrize("make, fragment", [
    (lambda: [member(0)], "at least 2 members, got 1: pass the checkpoints of two or more seeds"),
    (lambda: [], "at least 2 members, got 0"),
    (lambda: [member(0, hidden=5), member(1, hidden=6)],
     r"differ in more than the seed \(hidden_size 5 vs 6\)"),
    (lambda: [member(0), member(1, activation="tanh")], "activation 'relu' vs 'tanh'"),
    (lambda: [member(0), member(1, impl="torch")], "impl 'manual' vs 'torch'"),
    (lambda: [member(0), member(1), member(0)], "seed.s. 0 appear more than once"),
    (lambda: [ensemble.fold([member(0), member(1)]), member(2, hidden=10)], "itself an ensemble"),
    (lambda: [member(0), dataclasses.replace(member(1), state_dict={
        **member(1).state_dict, "fc3.weight": torch.zeros(10, 10)})], "only single-hidden-layer MLPs"),
    (lambda: [member(0), dataclasses.replace(member(1), normalization={"mean": 0.1, "std": 0.3})],
     "normalisation"),
])
def test_what_cannot_be_folded_exactly_is_refused(make, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ensemble.fold(make())


@pytest.mark.unit
@pytest.mark.parametrize("descriptions, fragment", [
    ([{"run_id": "a"}], "1 member descriptions for 2 members"),
    ([{"seed": 1}, {"seed": 0}], "described as seed 1 but its checkpoint has seed 0"),
    ([{"run": object()}, {}], "not plain data"),
    ([{"metrics": 1}, {}], "'metrics' key"),
])
def test_member_descriptions_must_match_the_members(descriptions, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ensemble.fold([member(0), member(1)], descriptions)


@pytest.mark.unit
def test_descriptions_that_name_the_right_seeds_are_kept_seed_zero_included():
    folded = ensemble.fold([member(0), member(1)], [{"seed": 0}, {"seed": 1}])
    assert [m["seed"] for m in folded.metrics["ensemble"]["members"]] == [0, 1]


def tiny(seed: int, **overrides) -> RunConfig:
    base = {"hidden_size": 16, "epochs": 1, "batch_size": 64, "device": "cpu", "val_size": 200, "lr": 0.05}
    return RunConfig(**{**base, **overrides, "seed": seed})


@pytest.mark.unit
def test_score_recomputes_the_fold_s_own_metrics_as_best_rechecks_a_checkpoint(tmp_path):
    splits = synthetic_splits(n_train=600, n_val=200, n_test=200, seed=0)
    results = train_population([tiny(seed) for seed in (0, 1, 2)], splits)
    paths = [save_result(r, splits, tmp_path / f"seed{r.config.seed}.pt").path for r in results]
    folded, path = ensemble.fold_files(paths, tmp_path / "fold.pt", splits,
                                       descriptions=[{"run_id": f"run{i}"} for i in range(3)])

    model, loaded = serving.load_model(path)  # as registry.fetch_best re-checks a downloaded checkpoint
    x = serving.renormalise(splits.val_x, (splits.mean, splits.std), loaded.normalization)
    assert loaded.metrics["best_val_acc"] == serving.evaluate(model, x, splits.val_y).accuracy
    assert loaded.metrics["test_acc"] == serving.evaluate(model, splits.test_x, splits.test_y).accuracy
    assert loaded.metrics["best_value"] == loaded.metrics["best_val_acc"]
    assert set(ensemble.scalar_metrics(loaded)) == {"best_val_acc", "best_value", "val_loss", "test_loss",
                                                     "test_acc"}  # no best_epoch: the fold had no epochs
    assert [m["metrics"]["test_acc"] for m in loaded.metrics["ensemble"]["members"]] == [
        r.test_acc for r in results]
    assert folded.metrics == loaded.metrics

    unscored = ensemble.fold(ensemble.load_members(paths))
    by_loss = ensemble.score(unscored, splits, Objective("val_loss", "minimize"))
    assert by_loss.metrics["best_value"] == by_loss.metrics["val_loss"] == loaded.metrics["val_loss"]

    # The same recomputation gives a member what the trainer logged for it.
    alone = ensemble.score(load_checkpoint(paths[0]), splits)
    assert abs(alone.metrics["best_val_acc"] - results[0].best_val_acc) * 200 <= 2

    wrong = synthetic_splits(n_train=64, n_val=100, n_test=64, seed=0)
    with pytest.raises(ConfigError, match=r"100 validation images, but the members were selected on 200: "
                                          r"load them with data.load_splits\(val_size=200\)"):
        ensemble.score(folded, wrong)


@pytest.mark.integration
def test_three_tiny_real_members_fold_into_one_that_scores_at_least_the_weakest(small_real_splits, tmp_path):
    splits = small_real_splits  # real 10k validation and test, 3000 training images
    configs = [tiny(seed, hidden_size=32, val_size=10_000, impl="manual") for seed in (0, 1, 2)]
    results = train_population(configs, splits)
    paths = [save_result(r, splits, tmp_path / f"seed{r.config.seed}.pt").path for r in results]
    folded, path = ensemble.fold_files(paths, tmp_path / "fold.pt", splits)

    model, loaded = serving.load_model(path)
    recomputed = serving.evaluate(model, splits.val_x, splits.val_y).accuracy
    assert loaded.hidden_size == 96 and loaded.metrics["best_val_acc"] == recomputed
    members = [r.best_val_acc for r in results]
    print(f"val_acc: members {', '.join(f'{a:.4f}' for a in members)}, fold {recomputed:.4f}; "
          f"test_acc: members {', '.join(f'{r.test_acc:.4f}' for r in results)}, "
          f"fold {loaded.metrics['test_acc']:.4f}")
    assert recomputed >= min(members)
