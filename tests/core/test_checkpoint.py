"""Checkpoints: plain-data format, atomic writes, refusal of anything else."""

import io
import pickle
import random
import warnings
import zipfile

import pytest
import torch

from fmnist_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

CLASSES = tuple(f"class{i}" for i in range(10))


def _state(hidden=4):
    return {"fc1.weight": torch.randn(hidden, 784), "fc1.bias": torch.randn(hidden),
            "fc2.weight": torch.randn(10, hidden), "fc2.bias": torch.randn(10)}


def _save(path, state=None, **extra):
    args = {"state_dict": state or _state(), "config": {"hidden_size": 4}, "classes": CLASSES,
            "normalization": {"mean": 0.286, "std": 0.353}, "metrics": {"test_acc": torch.tensor(0.5)}}
    args.update(extra)
    return save_checkpoint(path, **args).path


def test_a_saved_checkpoint_loads_with_plain_torch_load(tmp_path):
    state = _state()
    path = _save(tmp_path / "sub" / "model.pt", state)
    raw = torch.load(path, weights_only=True)
    assert set(raw) >= {"state_dict", "config", "normalization", "classes", "metrics"}
    model = torch.nn.Sequential(torch.nn.Linear(784, 4), torch.nn.ReLU(), torch.nn.Linear(4, 10))
    renamed = {k.replace("fc1", "0").replace("fc2", "2"): v for k, v in raw["state_dict"].items()}
    model.load_state_dict(renamed)
    assert torch.equal(model[0].weight, state["fc1.weight"])
    loaded = load_checkpoint(path)
    assert loaded.hidden_size == 4 and loaded.metrics["test_acc"] == 0.5 and loaded.classes == CLASSES
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left behind


def test_save_returns_the_checkpoint_the_file_holds_and_refuses_a_bad_one_before_writing(tmp_path):
    """What a run's log goes on with instead of reading the file back (RunLogger.log_result)."""
    state = {key: value.double().t().contiguous().t() for key, value in _state().items()}  # float64, strided
    path = tmp_path / "model.pt"
    saved = save_checkpoint(path, state_dict=state, config={"hidden_size": 4}, classes=list(CLASSES),
                            normalization={"mean": 0.286, "std": 0.353},
                            metrics={"test_acc": torch.tensor(0.5)})
    loaded = load_checkpoint(path)
    assert saved.path == loaded.path == path
    for key, value in loaded.state_dict.items():
        assert saved.state_dict[key].dtype == torch.float32 and saved.state_dict[key].is_contiguous()
        assert torch.equal(saved.state_dict[key], value)
    assert (saved.config, saved.normalization, saved.classes, saved.metrics) == \
        (loaded.config, loaded.normalization, loaded.classes, loaded.metrics) == \
        ({"hidden_size": 4}, {"mean": 0.286, "std": 0.353}, CLASSES, {"test_acc": 0.5})
    state["fc1.bias"][0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN"):
        save_checkpoint(tmp_path / "bad.pt", state_dict=state, config={}, classes=CLASSES,
                        normalization={"mean": 0.0, "std": 1.0}, metrics={})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # nothing written for the bad one


class _Payload:
    def __reduce__(self):
        return (exec, ("open('MARKER', 'w').write('ran')",))


def test_a_checkpoint_that_runs_code_when_unpickled_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": "x", "state_dict": _Payload()}, path)
    with pytest.raises(CheckpointError, match="refused: not a plain-data checkpoint: .* Python object exec"):
        load_checkpoint(path)
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("mutate, fragment", [
    (lambda p: p.pop("classes"), "classes"),
    (lambda p: p["state_dict"].pop("fc2.bias"), "keys"),
    (lambda p: p["state_dict"].update({"fc2.weight": torch.zeros(9, 4)}), "fc2.weight has shape"),
    (lambda p: p["state_dict"]["fc1.bias"].fill_(float("nan")), "NaN"),
    (lambda p: p.update({"format": "other/1"}), "format"),
])
def test_malformed_checkpoints_are_refused_with_the_reason(tmp_path, mutate, fragment):
    path = _save(tmp_path / "ok.pt")
    payload = torch.load(path, weights_only=True)
    mutate(payload)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=fragment):
        load_checkpoint(path)


def _zip_of_a_text_file(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a tensor")


def _cut_short_torch_file(path):
    buffer = io.BytesIO()
    torch.save({"a": torch.zeros(100)}, buffer)
    path.write_bytes(buffer.getvalue()[:300])


# Each makes torch.load raise something else: KeyError, EOFError, UnpicklingError, RuntimeError (zip reader).
@pytest.mark.parametrize("make", [
    lambda p: p.write_text("here are my notes\n"),
    lambda p: p.write_bytes(b""),
    lambda p: p.write_bytes(random.Random(0).randbytes(3000)),
    lambda p: p.write_bytes(pickle.dumps([1, 2, 3])[:5]),
    lambda p: p.write_bytes(pickle.dumps([1, 2, 3], protocol=4)),  # torch warns of the protocol
    _zip_of_a_text_file,
    _cut_short_torch_file,
], ids=["text", "empty", "random-bytes", "cut-short-pickle", "pickle-protocol-4", "zip", "cut-short-torch"])
def test_files_that_are_not_checkpoints_are_refused_in_one_sentence_without_warnings(tmp_path, make):
    path = tmp_path / "notes.pt"
    make(path)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(CheckpointError) as refused:
        warnings.simplefilter("always")
        load_checkpoint(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: not a checkpoint: torch.load cannot read it")
    assert "expected an fmnist checkpoint" in message and "\n" not in message
    assert [str(warning.message) for warning in caught] == []


def test_garbage_and_missing_files_are_refused(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(pickle.dumps([1, 2, 3])[:5])
    with pytest.raises(CheckpointError):
        load_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
