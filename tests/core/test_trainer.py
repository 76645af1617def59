"""The trainer: metrics, determinism, objective, divergence, populations, device choice, checkpoints."""

import dataclasses
import math

import pytest
import torch
from support import synthetic_splits

from fmnist_core import serving, trainer
from fmnist_core.checkpoint import load_checkpoint, save_checkpoint
from fmnist_core.config import ConfigError, Objective, RunConfig
from fmnist_core.learner import Learner
from fmnist_core.metrics import loss_and_correct
from fmnist_core.mlp_manual import ManualLearner
from fmnist_core.mlp_torch import TorchLearner, TorchMLP
from fmnist_core.trainer import (
    Diverged,
    checkpoint_payload,
    epoch_batches,
    make_learner,
    resolve_device,
    train,
    train_population,
)

# tiny matrices: one torch thread (see tests/core/conftest.py); under load 2 threads took 10x as long
pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]

METRICS = {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds", "samples_per_second",
           "grad_norm", "clip_fraction", "dead_relu_fraction"}


@pytest.fixture(scope="module")
def splits():
    return synthetic_splits(n_train=600, n_val=200, n_test=200, seed=0)


def tiny(**overrides) -> RunConfig:
    base = {"hidden_size": 16, "epochs": 3, "batch_size": 64, "device": "cpu", "val_size": 200, "lr": 0.05}
    return RunConfig(**{**base, **overrides})


@pytest.mark.parametrize("impl", ["manual", "torch"])
def test_every_epoch_reports_every_metric_and_learning_happens(splits, impl):
    seen = []
    result = train(tiny(impl=impl), splits, on_epoch=seen.append)
    assert [m["epoch"] for m in seen] == [1, 2, 3]
    assert all(METRICS <= set(m) for m in result.history)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best_val_acc > 0.8 and 0 < result.test_acc <= 1
    assert result.stop_reason == "completed" and 1 <= result.best_epoch <= 3


def test_the_same_seed_gives_identical_results_on_cpu(splits):
    # Exact equality, not approx: a refactor of the loop must not change a single bit.
    def strip(history):
        timing = ("epoch_seconds", "samples_per_second")
        return [{k: v for k, v in m.items() if k not in timing} for m in history]

    first, second = train(tiny(seed=3), splits), train(tiny(seed=3), splits)
    assert strip(first.history) == strip(second.history)
    assert (first.best_epoch, first.test_loss, first.test_acc) == (second.best_epoch, second.test_loss,
                                                                   second.test_acc)
    assert all(torch.equal(first.best_state[k], second.best_state[k]) for k in first.best_state)
    assert strip(train(tiny(seed=4), splits).history) != strip(first.history)


def test_both_learners_satisfy_the_learner_protocol():
    cpu = torch.device("cpu")
    manual: Learner = ManualLearner([tiny()], cpu, torch.float32)
    autograd: Learner = TorchLearner([tiny(impl="torch")], cpu, torch.float32)
    for learner in (manual, autograd, make_learner([tiny()], cpu), make_learner([tiny(impl="torch")], cpu)):
        assert isinstance(learner, Learner)
    assert not isinstance(TorchMLP(16), Learner)  # a module with a forward is not a population learner


def test_epoch_loss_and_accuracy_are_weighted_by_samples_not_batches(splits):
    # 600 samples in batches of 256: 256 + 256 + 88. A near-zero lr keeps the weights at their
    # initial values, so the epoch's train loss must equal the initial model's mean loss over
    # all 600 samples; a mean of per-batch means would over-weight the short batch.
    cfg = tiny(lr=1e-12, batch_size=256, epochs=1)
    learner = make_learner([cfg], torch.device("cpu"))
    loss_sum, correct = loss_and_correct(learner.logits(splits.train_x[None]), splits.train_y[None])
    result = train(cfg, splits)
    assert result.history[0]["train_loss"] == pytest.approx(loss_sum.item() / 600, rel=1e-5)
    assert result.history[0]["train_acc"] == pytest.approx(correct.item() / 600)


def test_test_metrics_use_the_weights_of_the_best_validation_epoch(splits):
    result = train(tiny(epochs=4), splits)
    model = TorchMLP.from_state_dict(result.best_state)
    with torch.no_grad():
        loss_sum, correct = loss_and_correct(model(splits.test_x), splits.test_y)
    assert result.test_acc == pytest.approx(correct.item() / len(splits.test_y))
    assert result.test_loss == pytest.approx(loss_sum.item() / len(splits.test_y), rel=1e-5)
    assert result.best_val_acc == result.best_value == max(m["val_acc"] for m in result.history)
    assert result.best_epoch == 1 + [m["val_acc"] for m in result.history].index(result.best_val_acc)


def test_the_objective_chooses_the_best_epoch_and_early_stopping_counts_its_improvements(splits):
    # On this easy data val_acc reaches 1.0 at once and ties from then on, while val_loss keeps falling.
    by_loss = train(tiny(epochs=4), splits, objective=Objective("val_loss", "minimize"))
    losses = [m["val_loss"] for m in by_loss.history]
    assert by_loss.best_epoch == 1 + losses.index(min(losses)) and by_loss.best_value == min(losses)
    assert by_loss.best_val_acc == by_loss.history[by_loss.best_epoch - 1]["val_acc"]
    by_acc = train(tiny(epochs=4), splits)
    assert by_acc.best_epoch < by_loss.best_epoch  # the two objectives pick different epochs here
    assert not torch.equal(by_acc.best_state["fc1.weight"], by_loss.best_state["fc1.weight"])
    model = TorchMLP.from_state_dict(by_loss.best_state)
    with torch.no_grad():
        loss_sum, _ = loss_and_correct(model(splits.test_x), splits.test_y)
    assert by_loss.test_loss == pytest.approx(loss_sum.item() / len(splits.test_y), rel=1e-5)
    assert by_loss.final_metrics()["best_value"] == by_loss.best_value

    plateau = tiny(epochs=6, patience=1)
    assert train(plateau, splits).stop_reason == "early_stopped"  # val_acc stops improving after epoch 1
    still_improving = train(plateau, splits, objective=Objective("val_loss", "minimize"))
    assert still_improving.stop_reason == "completed" and len(still_improving.history) == 6


def test_without_validation_data_nothing_is_selected_and_the_last_epoch_is_the_result(splits):
    no_val = dataclasses.replace(splits, val_x=splits.val_x[:0], val_y=splits.val_y[:0])
    result = train(tiny(val_size=0, epochs=3), no_val)
    assert result.best_epoch == 3 and not result.has_validation and result.val_correct is None
    assert math.isnan(result.best_val_acc) and math.isnan(result.best_value)
    assert set(result.final_metrics()) == {"best_epoch", "test_loss", "test_acc"}
    assert all("val_acc" not in m for m in result.history)
    # Validation does not change training: the same run with validation, whose val_loss is
    # lowest at its last epoch, must hold bit for bit the same weights.
    last = train(tiny(epochs=3), splits, objective=Objective("val_loss", "minimize"))
    assert last.best_epoch == 3
    assert all(torch.equal(result.best_state[k], last.best_state[k]) for k in last.best_state)
    assert result.test_acc == last.test_acc
    # Flat training accuracy (lr ~ 0): selecting on it, as before, would have kept epoch 1.
    assert train(tiny(val_size=0, epochs=3, lr=1e-12), no_val).best_epoch == 3


def test_val_correct_holds_the_images_that_the_best_epoch_classified_right(splits):
    # A small lr keeps accuracy well below 1, so the vector has both values.
    configs = [tiny(lr=lr, momentum=0.0, nesterov=False) for lr in (3e-4, 1e-3)]
    results = train_population(configs, splits)
    for cfg, result in zip(configs, results, strict=True):
        correct = result.val_correct
        assert correct.dtype == torch.bool and correct.device.type == "cpu" and correct.shape == (200,)
        assert 0 < correct.sum() < 200
        assert correct.sum().item() / 200 == result.best_val_acc  # the same pass as the best epoch's val_acc
        learner = make_learner([cfg], torch.device("cpu"))
        learner.load_member_state(0, result.best_state)
        predictions = learner.logits(splits.val_x[None])[0].argmax(-1)
        assert torch.equal(correct, predictions == splits.val_y)


@pytest.mark.parametrize("impl", ["manual", "torch"])
def test_the_test_pass_keeps_the_predictions_the_checkpoint_makes(splits, impl):
    # a run's confusion matrix and per-class table come from these, not from a second pass (run_log)
    results = train_population([tiny(impl=impl, hidden_size=8), tiny(impl=impl, hidden_size=16, seed=1)],
                               splits)
    for result in results:
        plain = serving.evaluate(serving.plain_model(result.best_state, result.config.activation),
                                 splits.test_x, splits.test_y)
        assert result.test_predictions.dtype == torch.int64 and result.test_predictions.device.type == "cpu"
        assert torch.equal(result.test_predictions, plain.predictions)
        kept = serving.evaluation_of(result.test_predictions, splits.test_y, result.test_loss)
        assert kept.accuracy == result.test_acc and torch.equal(kept.confusion, plain.confusion)


def test_the_last_epochs_vector_is_kept_beside_the_best_epochs_own(splits):
    # lr 0 after a first epoch's updates (step schedule, gamma 0): epochs 2 and 3 repeat epoch 1's weights,
    # so the best epoch is 1 (the earlier on a tie) and the last is 3, with the same predictions
    result = train(tiny(lr=1e-3, momentum=0.0, nesterov=False, epochs=3, schedule="step", step_size=1,
                        step_gamma=0.0), splits)
    assert (result.best_epoch, len(result.history)) == (1, 3)
    assert result.last_correct.dtype == torch.bool and result.last_correct.shape == (200,)
    assert result.last_correct.device.type == "cpu"
    assert result.last_correct.sum().item() / 200 == result.history[-1]["val_acc"]
    learner = make_learner([result.config], torch.device("cpu"))
    learner.load_member_state(0, result.best_state)
    assert torch.equal(result.last_correct, learner.logits(splits.val_x[None])[0].argmax(-1) == splits.val_y)
    # an epoch that changes the weights: the last epoch's vector is its own, not the best's
    moving = train(tiny(lr=3e-4, momentum=0.0, nesterov=False, epochs=3), splits)
    assert moving.last_correct.sum().item() / 200 == moving.history[-1]["val_acc"]
    assert train(tiny(val_size=0, epochs=1), splits).last_correct is None


@pytest.mark.parametrize("impl", ["manual", "torch"])
def test_a_nan_loss_stops_training_with_the_epoch_and_step(splits, impl):
    with pytest.raises(Diverged, match=r"epoch 1, step \d+") as caught:
        train(tiny(impl=impl, lr=1e6, momentum=0.0, nesterov=False, init="normal", init_scale=10.0), splits)
    assert caught.value.epoch == 1 and caught.value.step >= 1


def test_epoch_batches_slice_blocks_into_the_batches_of_the_data_order(splits, monkeypatch):
    monkeypatch.setattr(trainer, "BLOCK_SAMPLES", 150)  # blocks of 2 batches of 64: 600 = 4 full blocks + 88
    order = torch.stack([torch.randperm(600, generator=torch.Generator().manual_seed(s)) for s in (0, 1)])
    batches = list(epoch_batches(splits.train_x, splits.train_y, order, tiny(), None, mean=0.0, std=1.0))
    assert len(batches) == 10 and batches[-1][0].shape == (2, 24, 784)  # ceil(600 / 64), short last batch
    for step, (x, y) in enumerate(batches):
        index = order[:, step * 64:(step + 1) * 64]
        assert torch.equal(x, splits.train_x[index]) and torch.equal(y, splits.train_y[index])


@pytest.mark.parametrize("impl", ["manual", "torch"])
def test_augmented_members_match_separate_training_across_blocks(splits, impl, monkeypatch):
    monkeypatch.setattr(trainer, "BLOCK_SAMPLES", 128)  # several augmentation blocks per epoch
    shared = {"impl": impl, "augment_flip": True, "augment_rotate": 10.0, "augment_translate": 1, "epochs": 2}
    one_seed = [tiny(**shared, lr=0.05, seed=3), tiny(**shared, lr=0.1, seed=3)]  # one batch, expanded
    two_seeds = [tiny(**shared, lr=0.05, seed=3), tiny(**shared, lr=0.05, seed=4)]  # a batch per seed
    for configs in (one_seed, two_seeds):
        together = train_population(configs, splits)
        for cfg, member in zip(configs, together, strict=True):
            alone = train(cfg, splits)
            for epoch_alone, epoch_member in zip(alone.history, member.history, strict=True):
                for key in ("train_loss", "train_acc", "val_acc"):
                    assert epoch_member[key] == pytest.approx(epoch_alone[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("impl", ["manual", "torch"])
def test_a_diverging_member_fails_alone_and_the_others_match_separate_training(splits, impl):
    good = [tiny(impl=impl, lr=0.05, seed=1), tiny(impl=impl, lr=0.1, seed=2, weight_decay=0.0)]
    bad = tiny(impl=impl, lr=1e6, seed=1, momentum=0.0, nesterov=False, init="normal", init_scale=10.0)
    together = train_population([good[0], bad, good[1]], splits)
    assert isinstance(together[1].error, Diverged) and together[1].best_state is None
    for cfg, member in zip(good, (together[0], together[2]), strict=True):
        alone = train(cfg, splits)
        assert member.error is None
        for epoch_alone, epoch_member in zip(alone.history, member.history, strict=True):
            for key in ("train_loss", "train_acc", "val_loss", "val_acc", "grad_norm"):
                assert epoch_member[key] == pytest.approx(epoch_alone[key], rel=1e-4, abs=1e-6), key
        assert member.test_acc == pytest.approx(alone.test_acc, abs=1e-9)


def test_a_callback_can_stop_one_member_and_early_stopping_stops_on_a_plateau(splits):
    results = train_population([tiny(seed=0), tiny(seed=1)], splits,
                               on_epoch=lambda member, metrics: member == 0 and metrics["epoch"] == 1)
    assert results[0].stop_reason == "stopped_by_callback" and len(results[0].history) == 1
    assert results[1].stop_reason == "completed" and len(results[1].history) == 3
    plateau = train(tiny(epochs=6, patience=1, lr=1e-9), splits)  # nothing improves after epoch 1
    assert plateau.stop_reason == "early_stopped" and len(plateau.history) == 2


def test_clip_fraction_grad_norm_and_dead_units_are_measured(splits):
    clipped = train(tiny(clip_mode="norm", clip_value=1e-6, epochs=1), splits).history[0]
    assert clipped["clip_fraction"] == 1.0 and clipped["grad_norm"] > 1e-6
    assert train(tiny(epochs=1), splits).history[0]["clip_fraction"] == 0.0
    # All-zero weights give z1 = 0 everywhere and zero gradients for W1: every ReLU stays dead.
    dead = train(tiny(init="zeros", epochs=1), splits).history[0]
    assert dead["dead_relu_fraction"] == 1.0


def test_members_must_share_what_sets_the_loop_but_not_their_width(splits):
    with pytest.raises(ConfigError, match="share batch_size"):
        train_population([tiny(batch_size=32), tiny(batch_size=64)], splits)
    with pytest.raises(ConfigError, match="share activation"):
        train_population([tiny(hidden_size=8), tiny(hidden_size=16, activation="tanh")], splits)
    results = train_population([tiny(hidden_size=8), tiny(hidden_size=16)], splits)  # packed
    assert [r.best_state["fc1.weight"].shape[0] for r in results] == [8, 16]


def test_device_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = torch.accelerator.current_accelerator(check_available=True) or torch.device("cpu")
    assert resolve_device("auto") == expected
    for name, available in (("cuda", torch.cuda.is_available()), ("mps", torch.backends.mps.is_available())):
        if not available:
            with pytest.raises(ConfigError, match=f"device '{name}' is not available"):
                resolve_device(name)


def test_a_checkpoint_of_a_result_reloads_into_a_plain_module(splits, tmp_path):
    result = train(tiny(epochs=1), splits)
    path = save_checkpoint(tmp_path / "run.pt", **checkpoint_payload(result, splits)).path
    loaded = load_checkpoint(path)
    assert loaded.config == tiny(epochs=1).as_dict()
    assert loaded.metrics["test_acc"] == result.test_acc
    assert loaded.normalization == {"mean": splits.mean, "std": splits.std}
