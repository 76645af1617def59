"""Tests of fmnist_core.data against the real Fashion-MNIST files and tiny made-up images.

The real files come from the Debian package dataset-fashion-mnist; tests that need them are
skipped where it is not installed. Nothing here downloads: every search that could fall
through to the download passes allow_download=False or replaces torchvision's FashionMNIST.
"""

from __future__ import annotations

import gzip
import math
import shutil
from pathlib import Path

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from support import synthetic_splits

from fmnist_core import data
from fmnist_core.data import (
    CLASSES,
    FILES,
    MEAN,
    STD,
    DataError,
    augment_batch,
    dataset_digest,
    load_raw,
    load_splits,
    locate_data_dir,
    stratified_split,
)

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
EXPECTED_DIGEST = "697249e9d1e8"  # first 12 hex of sha256 over the four pinned content digests
FILL = -MEAN / STD  # a black pixel, normalised
needs_real_data = pytest.mark.skipif(
    not all((SYSTEM_DIR / f"{name}.gz").is_file() for name in FILES),
    reason="needs `apt-get install dataset-fashion-mnist`",
)


def link_files(directory: Path, names=tuple(FILES)) -> Path:
    """Fill `directory` with symlinks to the system .gz files (cheap, no copies)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / f"{name}.gz").symlink_to(SYSTEM_DIR / f"{name}.gz")
    return directory


@pytest.fixture(scope="module")
def raw():
    return load_raw(SYSTEM_DIR)


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory) -> Path:
    """The four files decompressed, as plain IDX."""
    directory = tmp_path_factory.mktemp("plain")
    for name in FILES:
        with gzip.open(SYSTEM_DIR / f"{name}.gz", "rb") as reader, open(directory / name, "wb") as writer:
            shutil.copyfileobj(reader, writer)
    return directory


@pytest.fixture
def clean_search(monkeypatch, tmp_path):
    """No FMNIST_DATA, an empty current directory, and the default dirs under our control."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


# --- loading and verification ------------------------------------------------------------


@needs_real_data
def test_real_data_shapes_dtypes_and_class_counts(raw):
    assert raw.train_images.shape == (60_000, 28, 28) and raw.train_images.dtype == torch.uint8
    assert raw.test_images.shape == (10_000, 28, 28) and raw.test_images.dtype == torch.uint8
    assert raw.train_labels.shape == (60_000,) and raw.train_labels.dtype == torch.int64
    assert raw.test_labels.shape == (10_000,) and raw.test_labels.dtype == torch.int64
    assert torch.bincount(raw.train_labels).tolist() == [6000] * len(CLASSES)
    assert torch.bincount(raw.test_labels).tolist() == [1000] * len(CLASSES)
    assert raw.source == SYSTEM_DIR.resolve()


@needs_real_data
def test_digest_is_stable_and_load_is_cached(raw):
    assert raw.digest == EXPECTED_DIGEST == dataset_digest(SYSTEM_DIR)
    assert load_raw(SYSTEM_DIR) is raw


@needs_real_data
def test_mean_and_std_match_the_training_images(raw):
    pixels = raw.train_images.double() / 255
    assert abs(pixels.mean().item() - MEAN) < 1e-4
    assert abs(pixels.std(unbiased=False).item() - STD) < 1e-4


@needs_real_data
def test_plain_idx_loads_the_same_as_gzip(raw, plain_dir):
    from_plain = load_raw(plain_dir)
    assert from_plain.digest == raw.digest
    assert torch.equal(from_plain.train_images, raw.train_images)
    assert torch.equal(from_plain.test_labels, raw.test_labels)


@needs_real_data
@pytest.mark.parametrize("damage", ["truncate", "flip_byte"])
def test_damaged_plain_file_is_an_error_naming_it(plain_dir, tmp_path, damage):
    victim = "train-labels-idx1-ubyte"
    link_files(tmp_path, [name for name in FILES if name != victim])
    content = bytearray((plain_dir / victim).read_bytes())
    if damage == "truncate":
        content = content[: len(content) // 2]
    else:
        content[1000] ^= 0x01  # one label changes: still a well-formed IDX file
    (tmp_path / victim).write_bytes(bytes(content))
    expected_word = "truncated" if damage == "truncate" else "corrupted"
    with pytest.raises(DataError, match=f"{victim}.*{expected_word}"):
        load_raw(tmp_path)


@needs_real_data
def test_truncated_gzip_is_an_error_naming_it(tmp_path):
    victim = "t10k-labels-idx1-ubyte"
    link_files(tmp_path, [name for name in FILES if name != victim])
    compressed = (SYSTEM_DIR / f"{victim}.gz").read_bytes()
    (tmp_path / f"{victim}.gz").write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(DataError, match=f"{victim}.gz"):
        load_raw(tmp_path)


@needs_real_data
def test_missing_file_is_an_error_naming_it(tmp_path):
    link_files(tmp_path, [name for name in FILES if name != "t10k-images-idx3-ubyte"])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.*apt-get install"):
        load_raw(tmp_path)


# --- search order ------------------------------------------------------------------------


@needs_real_data
def test_explicit_dir_beats_environment(clean_search, tmp_path):
    explicit, from_env = link_files(tmp_path / "explicit"), link_files(tmp_path / "env")
    clean_search.setenv(data.ENV_VAR, str(from_env))
    assert locate_data_dir(explicit) == explicit.resolve()
    assert locate_data_dir() == from_env.resolve()


@needs_real_data
def test_environment_beats_local_data_dir(clean_search, tmp_path):
    link_files(tmp_path / "data")
    from_env = link_files(tmp_path / "env")
    clean_search.setenv(data.ENV_VAR, str(from_env))
    assert locate_data_dir() == from_env.resolve()


@needs_real_data
def test_local_data_dir_beats_system_dir_in_either_layout(clean_search, tmp_path):
    assert locate_data_dir() == SYSTEM_DIR.resolve()  # nothing local yet
    torchvision_layout = link_files(tmp_path / "data" / "FashionMNIST" / "raw")
    assert locate_data_dir() == torchvision_layout.resolve()
    flat = link_files(tmp_path / "data")
    assert locate_data_dir() == flat.resolve()


def test_unusable_explicit_or_environment_dir_is_an_error(clean_search, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="lacks train-images-idx3-ubyte"):
        locate_data_dir(empty)
    with pytest.raises(DataError, match="not a directory"):
        locate_data_dir(tmp_path / "nowhere")
    clean_search.setenv(data.ENV_VAR, str(empty))
    with pytest.raises(DataError, match="FMNIST_DATA"):
        locate_data_dir()


def test_nothing_found_without_download_is_an_error(clean_search, tmp_path):
    clean_search.setattr(data, "DEFAULT_DATA_DIRS", (Path("data"), tmp_path / "no-system-dir"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        locate_data_dir(allow_download=False)


@needs_real_data
def test_download_is_the_last_resort_into_local_data(clean_search, tmp_path):
    requested_roots = []

    class FakeFashionMNIST:  # stands in for torchvision's downloader: links instead of fetching
        def __init__(self, root, train, download):
            requested_roots.append(Path(root).resolve())
            link_files(Path(root) / "FashionMNIST" / "raw")

    clean_search.setattr("torchvision.datasets.FashionMNIST", FakeFashionMNIST)
    clean_search.setattr(data, "DEFAULT_DATA_DIRS", (Path("data"), tmp_path / "no-system-dir"))
    assert locate_data_dir() == (tmp_path / "data" / "FashionMNIST" / "raw").resolve()
    assert requested_roots == [(tmp_path / "data").resolve()]


# --- splits ------------------------------------------------------------------------------


def test_stratified_split_is_disjoint_complete_and_balanced():
    labels = torch.arange(60_000) % 10
    train_idx, val_idx = stratified_split(labels, 10_000, seed=0)
    assert len(val_idx) == 10_000 and len(train_idx) == 50_000
    assert torch.equal(torch.cat([train_idx, val_idx]).sort().values, torch.arange(60_000))
    assert torch.bincount(labels[val_idx]).tolist() == [1000] * 10
    _, small_val = stratified_split(labels, 15, seed=3)  # 1.5 per class: each class gets 1 or 2
    counts = torch.bincount(labels[small_val], minlength=10)
    assert counts.sum() == 15 and counts.min() >= 1 and counts.max() <= 2


def test_stratified_split_is_deterministic_per_seed():
    labels = torch.arange(6_000) % 10
    first, again, other = (stratified_split(labels, 1_000, seed) for seed in (0, 0, 1))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[1], other[1])


@needs_real_data
def test_load_splits_honours_val_size_and_normalises():
    splits = load_splits(SYSTEM_DIR, val_size=5_000, seed=0)
    assert splits.train_x.shape == (55_000, 784) and splits.train_x.dtype == torch.float32
    assert splits.val_x.shape == (5_000, 784) and splits.test_x.shape == (10_000, 784)
    assert splits.train_y.dtype == torch.int64 and torch.bincount(splits.val_y).tolist() == [500] * 10
    assert abs(splits.train_x.mean().item()) < 0.01 and abs(splits.train_x.std().item() - 1) < 0.01
    assert splits.digest == EXPECTED_DIGEST and splits.classes == CLASSES
    assert load_splits(SYSTEM_DIR, val_size=0).val_x.shape == (0, 784)


def test_synthetic_splits_have_real_shapes_and_separable_classes():
    splits = synthetic_splits(200, 50, 60, seed=1)
    assert splits.train_x.shape == (200, 784) and splits.val_x.shape == (50, 784)
    assert splits.test_x.shape == (60, 784) and splits.test_y.dtype == torch.int64
    assert splits.train_x.dtype == torch.float32 and splits.digest == "synthetic"
    assert splits.train_x.min().item() == pytest.approx(FILL, abs=1e-6)  # black pixels exist
    centroids = torch.stack([splits.train_x[splits.train_y == c].mean(0) for c in range(10)])
    predicted = torch.cdist(splits.test_x, centroids).argmin(1)
    assert (predicted == splits.test_y).float().mean() > 0.9


# --- augmentation ------------------------------------------------------------------------


def asymmetric_batch(count: int) -> torch.Tensor:
    return torch.randn(count, 784, generator=torch.Generator().manual_seed(0))


def test_no_augmentation_returns_the_same_tensor():
    x = asymmetric_batch(4)
    generator = torch.Generator().manual_seed(0)
    assert augment_batch(x, generator, flip=False, rotate_degrees=0.0) is x
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(0).get_state())  # no draws


def test_flip_mirrors_about_half_the_samples_exactly():
    x = asymmetric_batch(1_000)
    out = augment_batch(x, torch.Generator().manual_seed(0), flip=True, rotate_degrees=0.0)
    images, out_images = x.view(-1, 28, 28), out.view(-1, 28, 28)
    mirrored = (out_images == images.flip(-1)).flatten(1).all(1)
    unchanged = (out_images == images).flatten(1).all(1)
    assert bool((mirrored ^ unchanged).all())  # every sample is exactly one of the two
    assert 400 < int(mirrored.sum()) < 600


def test_rotation_matches_torchvision_and_rot90():
    image = asymmetric_batch(1).view(1, 1, 28, 28)
    quarter_turn = data._rotate(image, torch.tensor([math.pi / 2]), fill=0.0)
    assert torch.allclose(quarter_turn, torch.rot90(image, 1, (-2, -1)), atol=1e-5)  # counter-clockwise
    thirty = data._rotate(image, torch.tensor([math.radians(30)]), fill=0.0)
    reference = TF.rotate(image, 30.0, interpolation=TF.InterpolationMode.BILINEAR)
    assert torch.allclose(thirty, reference, atol=1e-4)


def test_rotation_fills_the_corners_with_black_not_zero():
    white = torch.full((1, 1, 28, 28), (1 - MEAN) / STD)
    turned = data._rotate(white, torch.tensor([math.radians(45)]), fill=FILL)
    assert turned[0, 0, 0, 0].item() == pytest.approx(FILL, abs=1e-5)
    assert turned[0, 0, 14, 14].item() == pytest.approx((1 - MEAN) / STD, abs=1e-5)


def test_random_rotation_keeps_shape_background_and_is_reproducible():
    x = torch.full((3, 64, 784), FILL)
    x.view(3, 64, 28, 28)[..., 12:16, 12:16] = 2.0  # a small central square on black
    out = augment_batch(x, torch.Generator().manual_seed(7), flip=True, rotate_degrees=30.0)
    again = augment_batch(x, torch.Generator().manual_seed(7), flip=True, rotate_degrees=30.0)
    other = augment_batch(x, torch.Generator().manual_seed(8), flip=True, rotate_degrees=30.0)
    assert out.shape == x.shape and torch.equal(out, again) and not torch.equal(out, other)
    far_from_square = out.view(3, 64, 28, 28)[..., :6, :]
    assert torch.allclose(far_from_square, torch.full_like(far_from_square, FILL), atol=1e-5)
    assert not torch.equal(out, x)  # rotation by a nonzero angle does move the square's edges


def test_translation_moves_each_image_by_whole_pixels_within_the_bound():
    background = -data.MEAN / data.STD
    images = torch.full((64, 28, 28), background)
    images[:, 14, 14] = 3.0  # one bright pixel in the middle
    out = augment_batch(images.reshape(64, 784), torch.Generator().manual_seed(0), flip=False,
                        rotate_degrees=0.0, translate_pixels=2).reshape(64, 28, 28)
    moves = set()
    for image in out:
        bright = (image - 3.0).abs() < 1e-5
        assert bright.sum() == 1  # whole-pixel shifts resample exactly: nothing is blurred
        row, col = (int(v) for v in bright.nonzero()[0])
        assert abs(row - 14) <= 2 and abs(col - 14) <= 2
        assert torch.allclose(image[~bright], torch.tensor(background))
        moves.add((row - 14, col - 14))
    assert len(moves) >= 10  # many of the 25 possible shifts occur in 64 draws


def test_the_flip_folded_into_the_resampling_equals_flipping_first():
    images = asymmetric_batch(6).view(6, 1, 28, 28)
    angles = torch.linspace(-0.3, 0.3, 6)
    shifts = torch.tensor([[1, 0], [0, -2], [2, 2], [0, 0], [-1, 1], [3, -3]])
    mirror = torch.tensor([True, False, True, True, False, True])
    folded = data._rotate(images, angles, fill=FILL, shifts=shifts, mirror=mirror)
    flipped_first = torch.where(mirror[:, None, None, None], images.flip(-1), images)
    separate = data._rotate(flipped_first, angles, fill=FILL, shifts=shifts)
    assert torch.allclose(folded, separate, atol=1e-5)
