"""The data's safety checks in seconds, without the real Fashion-MNIST: the pinned-digest check and the
in-process cache that must not hide a file replaced after it was loaded.

Four tiny IDX files (a few 28x28 images) are written to tmp_path and `data.FILES` is pinned to their
SHA-256s for the test, so the code under test is data.py's own, run on files the test controls.
tests/core/test_data.py runs the same checks on the real files.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct

import pytest
import torch

from fmnist_core import data
from fmnist_core.data import DataError, load_raw

pytestmark = pytest.mark.unit

TRAIN, TEST = 12, 6  # images


def idx_bytes(tensor: torch.Tensor) -> bytes:
    """uint8 tensor -> IDX file content: magic (0, 0, type 0x08 = ubyte, dims), the sizes, the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, tensor.dim()) + struct.pack(f">{tensor.dim()}I", *tensor.shape)
    return header + tensor.numpy().tobytes()


@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    """A folder of four tiny IDX files (labels gzipped, images plain) that data.py takes for the real ones."""
    generator = torch.Generator().manual_seed(0)

    def images(count: int) -> torch.Tensor:
        return torch.randint(0, 256, (count, 28, 28), generator=generator, dtype=torch.uint8)

    contents = {
        "train-images-idx3-ubyte": images(TRAIN),
        "train-labels-idx1-ubyte": torch.arange(TRAIN, dtype=torch.uint8) % 10,
        "t10k-images-idx3-ubyte": images(TEST),
        "t10k-labels-idx1-ubyte": torch.arange(TEST, dtype=torch.uint8) % 10,
    }
    folder = tmp_path / "fmnist"
    folder.mkdir()
    pinned, sizes = {}, {}
    for name, tensor in contents.items():
        content = idx_bytes(tensor)
        pinned[name], sizes[name] = hashlib.sha256(content).hexdigest(), len(content)
        if "labels" in name:
            (folder / f"{name}.gz").write_bytes(gzip.compress(content))
        else:
            (folder / name).write_bytes(content)
    monkeypatch.setattr(data, "FILES", pinned)
    monkeypatch.setattr(data, "_FILE_BYTES", sizes)
    data._load_verified.cache_clear()  # nothing loaded under the real pins answers for these files
    yield folder, contents
    data._load_verified.cache_clear()


def replace_file(path, content: bytes) -> None:
    """Write `content` to `path` as a new file would arrive: a new inode, a later modification time."""
    before = path.stat().st_mtime_ns
    fresh = path.with_name(path.name + ".new")
    fresh.write_bytes(content)
    os.utime(fresh, ns=(before + 1_000_000_000, before + 1_000_000_000))
    os.replace(fresh, path)


def test_files_that_match_their_pinned_digests_load_as_written(tiny_data):
    folder, contents = tiny_data
    raw = load_raw(folder)
    assert torch.equal(raw.train_images, contents["train-images-idx3-ubyte"])
    assert torch.equal(raw.test_labels, contents["t10k-labels-idx1-ubyte"].long())
    assert raw.source == folder.resolve()
    assert load_raw(folder) is raw  # cached: the files are read and hashed once per process


@pytest.mark.parametrize("damage, word", [("flip_byte", "corrupted"), ("truncate", "truncated")])
def test_a_file_that_is_not_the_pinned_content_is_refused_naming_it(tiny_data, damage, word):
    folder, _ = tiny_data
    victim = folder / "train-images-idx3-ubyte"
    content = bytearray(victim.read_bytes())
    if damage == "flip_byte":
        content[100] ^= 0x01  # one pixel of one image: still a well-formed IDX file
    else:
        content = content[: len(content) // 2]
    victim.write_bytes(bytes(content))
    with pytest.raises(DataError, match=f"{victim.name} is {word}"):
        load_raw(folder)


def test_a_gzipped_file_with_other_content_is_refused_naming_it(tiny_data):
    folder, contents = tiny_data
    victim = folder / "t10k-labels-idx1-ubyte.gz"
    victim.write_bytes(gzip.compress(idx_bytes((contents["t10k-labels-idx1-ubyte"] + 1) % 10)))
    with pytest.raises(DataError, match=f"{victim.name} is corrupted"):
        load_raw(folder)


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte.gz"])
def test_a_file_replaced_after_it_was_loaded_is_checked_again(tiny_data, name):
    """The cache keys on each file's size and modification time: a file replaced in the same process
    (a re-download, a copy over it) is read and verified again, not answered from memory."""
    folder, contents = tiny_data
    load_raw(folder)
    victim = folder / name
    if name.endswith(".gz"):
        replaced = gzip.compress(idx_bytes((contents["t10k-labels-idx1-ubyte"] + 1) % 10))
    else:
        replaced = bytearray(victim.read_bytes())
        replaced[100] ^= 0x01  # same size: only the time stamp tells the files apart
        replaced = bytes(replaced)
    replace_file(victim, replaced)
    with pytest.raises(DataError, match=f"{victim.name} is corrupted"):
        load_raw(folder)
