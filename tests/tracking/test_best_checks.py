"""What `best` checks before it hands a checkpoint over, in-process and in seconds: the validation
accuracy recomputed from the checkpoint must be what its run logged (registry._recheck), and the data
here must be the data the run trained on (registry._splits_of). No MLflow store: the run is a stand-in
with the fields the checks read; the model is trained for two epochs on tiny synthetic data.
tests/cli/test_cli_tracking.py runs the same checks end to end through `cli.py best`.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from support import synthetic_splits

from fmnist_core import serving
from fmnist_core.config import RunConfig
from fmnist_core.trainer import save_result, train
from fmnist_tracking import registry
from fmnist_tracking.names import DATASET_DIGEST_TAG
from fmnist_tracking.store import TrackingError

pytestmark = pytest.mark.unit


def logged_run(best_val_acc: float, *, val_size: int = 64, digest: str | None = None):
    """The parts of an MLflow Run the checks read."""
    tags = {} if digest is None else {DATASET_DIGEST_TAG: digest}
    return SimpleNamespace(info=SimpleNamespace(run_id="run0"),
                           data=SimpleNamespace(metrics={"best_val_acc": best_val_acc},
                                                params={"val_size": str(val_size)}, tags=tags))


@pytest.fixture(scope="module")
def splits():
    return synthetic_splits(256, 64, 64, seed=0)


@pytest.fixture(scope="module")
def trained(splits, tmp_path_factory):
    """(model, checkpoint, what the trainer logged as best_val_acc) of a two-epoch run on `splits`."""
    config = RunConfig(hidden_size=16, epochs=2, batch_size=32, lr=0.05, val_size=len(splits.val_y))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread only stalls under load (tests/core/conftest.py)
    try:
        result = train(config, splits)
    finally:
        torch.set_num_threads(threads)
    path = save_result(result, splits, tmp_path_factory.mktemp("best") / "checkpoint.pt").path
    model, checkpoint = serving.load_model(path)
    return model, checkpoint, result.best_val_acc


def test_the_runs_own_checkpoint_is_accepted_with_the_accuracy_it_logged(trained, splits):
    model, checkpoint, logged = trained
    assert logged > 0.5  # it learned: a model of other weights would score otherwise
    assert registry._recheck(logged_run(logged), model, checkpoint, splits) == pytest.approx(logged)


@pytest.mark.parametrize("images_off", [-3, 3, 20])
def test_a_checkpoint_scoring_other_than_its_run_logged_is_refused(trained, splits, images_off):
    """More than VAL_TOLERANCE_IMAGES (2) images apart: not the run's checkpoint, or not its split."""
    model, checkpoint, logged = trained
    claimed = logged + images_off / len(splits.val_y)
    with pytest.raises(TrackingError, match="checkpoint of run run0 scores val_acc .* but the run logged"):
        registry._recheck(logged_run(claimed), model, checkpoint, splits)


@pytest.mark.parametrize("images_off", [-2, 2])
def test_rounding_of_up_to_two_images_is_tolerated(trained, splits, images_off):
    model, checkpoint, logged = trained
    claimed = logged + images_off / len(splits.val_y)
    assert registry._recheck(logged_run(claimed), model, checkpoint, splits) == pytest.approx(logged)


def test_a_run_trained_on_other_data_is_refused_before_its_checkpoint_is_scored(splits, monkeypatch):
    asked = []
    from fmnist_core import data as fdata  # registry imports it where a run's splits are loaded

    monkeypatch.setattr(fdata, "load_splits",
                        lambda data_dir, *, val_size: asked.append(val_size) or splits)
    with pytest.raises(TrackingError, match="trained on data with digest 0123456789ab, but the data here "
                                            "has digest synthetic; point --data-dir"):
        registry._splits_of(logged_run(0.5, val_size=64, digest="0123456789ab"), None)
    assert registry._splits_of(logged_run(0.5, val_size=64, digest="synthetic"), None) is splits
    assert registry._splits_of(logged_run(0.5, val_size=64), None) is splits  # runs from before the tag
    assert asked == [64, 64, 64]  # the run's own val_size: the split it was selected on
