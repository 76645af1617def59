"""Fashion-MNIST: locate, verify, load, normalise and split; on-device batch augmentation.

Everything the trainer needs to know about the data lives here, so that there is one way
to find the files, one check that they are the real ones, one normalisation and one split.

Search order of `locate_data_dir` (the first directory that holds all four files wins):
  1. the `data_dir` argument, if given (unusable -> DataError; no fall-through),
  2. the environment variable FMNIST_DATA, if set (unusable -> DataError; no fall-through),
  3. DEFAULT_DATA_DIRS in order: ./data (relative to the current directory), then
     /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist),
  4. if `allow_download`: torchvision.datasets.FashionMNIST(download=True) into ./data.
A directory holds the data if each file of FILES is there as NAME or NAME.gz, either directly
or inside FashionMNIST/raw/ (torchvision's layout). Their decompressed bytes are checked against
the pinned SHA-256 in FILES, so a truncated or altered file is an error, never silently wrong data,
and the bytes checked are the bytes parsed (IDX: a 4-byte magic, 4 bytes per dimension, one byte per
pixel or label). torchvision is imported only to download: importing it costs seconds (it loads
torch._dynamo), more than reading the files.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# File name (without .gz) -> SHA-256 of the decompressed IDX content. The .gz bytes differ
# between distributors (Debian vs torchvision mirrors); the decompressed bytes do not.
FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
# Names this exact data set in run tags; every load checks the content digests, so it is a constant.
DIGEST = hashlib.sha256("\n".join(FILES.values()).encode()).hexdigest()[:12]
# Decompressed sizes in bytes (IDX header + one byte per pixel or label); tells "truncated" apart.
_FILE_BYTES = {
    "train-images-idx3-ubyte": 47_040_016,
    "train-labels-idx1-ubyte": 60_008,
    "t10k-images-idx3-ubyte": 7_840_016,
    "t10k-labels-idx1-ubyte": 10_008,
}
ENV_VAR = "FMNIST_DATA"
DEFAULT_DATA_DIRS: tuple[Path, ...] = (Path("data"), Path("/usr/share/datasets/fashion-mnist"))
DOWNLOAD_DIR = Path("data")  # relative to the current directory, like ./data above
TORCHVISION_SUBDIR = Path("FashionMNIST", "raw")
INSTALL_HINT = (
    "install Fashion-MNIST with `apt-get install dataset-fashion-mnist`, or set FMNIST_DATA to a "
    "directory holding the four IDX files (plain or .gz)"
)

# Pixel mean and std of the 60k training images in [0, 1] units, over all pixels
# (exact: 0.286041, 0.353024). Not MNIST's 0.1307 / 0.3081.
MEAN = 0.2860
STD = 0.3530
# The one home of the data's shape; models, checkpoints and serving import these.
IMAGE_SIDE = 28  # pixels
IMAGE_PIXELS = IMAGE_SIDE * IMAGE_SIDE
INPUT_SIZE = IMAGE_PIXELS  # the MLP's input width: one normalised value per pixel
NUM_CLASSES = len(CLASSES)


class DataError(Exception):
    """The data is missing, unreadable or not the real Fashion-MNIST; the message says what to do."""


def _missing_files(directory: Path) -> list[str]:
    return [name for name in FILES if not any((directory / f"{name}{ext}").is_file() for ext in ("", ".gz"))]


def _holding_dir(directory: Path) -> Path | None:
    """`directory` or its FashionMNIST/raw/ subdirectory, whichever holds all four files."""
    for candidate in (directory, directory / TORCHVISION_SUBDIR):
        if candidate.is_dir() and not _missing_files(candidate):
            return candidate.resolve()
    return None


def _require_holding_dir(directory: Path, origin: str) -> Path:
    found = _holding_dir(directory)
    if found is not None:
        return found
    if not directory.is_dir():
        raise DataError(f"{origin} {directory} is not a directory; point it at the Fashion-MNIST files.")
    raise DataError(
        f"{origin} {directory} lacks {', '.join(_missing_files(directory))} (neither plain nor .gz, "
        f"nor in {TORCHVISION_SUBDIR}/); copy the files there or {INSTALL_HINT}."
    )


def locate_data_dir(data_dir: str | os.PathLike | None = None, *, allow_download: bool = True) -> Path:
    """The resolved directory that directly holds the four files; search order in the module docstring."""
    if data_dir is not None:
        return _require_holding_dir(Path(data_dir), "data directory")
    if os.environ.get(ENV_VAR):
        return _require_holding_dir(Path(os.environ[ENV_VAR]), f"{ENV_VAR}=")
    for directory in DEFAULT_DATA_DIRS:
        found = _holding_dir(directory)
        if found is not None:
            return found
    searched = ", ".join(str(d) for d in DEFAULT_DATA_DIRS)
    if not allow_download:
        raise DataError(f"Fashion-MNIST not found in {searched}; {INSTALL_HINT}.")
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(root=str(DOWNLOAD_DIR), train=True, download=True)
    except Exception as error:  # network, mirror or disk trouble: all fixed the same way
        raise DataError(
            f"Fashion-MNIST not found in {searched} and downloading it into {DOWNLOAD_DIR.resolve()} "
            f"failed ({error}); {INSTALL_HINT}."
        ) from error
    return _require_holding_dir(DOWNLOAD_DIR, "download directory")


def _verified_bytes(directory: Path, name: str) -> bytes:
    """The decompressed content of the plain or .gz file `name`, checked against FILES[name]."""
    source = directory / name if (directory / name).is_file() else directory / f"{name}.gz"
    opener = gzip.open if source.suffix == ".gz" else open
    try:
        with opener(source, "rb") as reader:
            content = reader.read()
    except (OSError, EOFError, zlib.error) as error:  # unreadable, truncated or corrupt gzip stream
        raise DataError(
            f"cannot read {source} ({error}); delete the file and re-run to download it again, "
            f"or {INSTALL_HINT}."
        ) from error
    digest = hashlib.sha256(content).hexdigest()
    if digest != FILES[name]:
        state = "truncated" if len(content) < _FILE_BYTES[name] else "corrupted"
        raise DataError(
            f"{source} is {state}: its content has {len(content)} bytes and SHA-256 {digest[:12]}..., "
            f"expected {_FILE_BYTES[name]} bytes and {FILES[name][:12]}...; delete the file and re-run "
            f"to download it again, or {INSTALL_HINT}."
        )
    return content


def _idx_tensor(content: bytes) -> torch.Tensor:
    """An IDX file's array of unsigned bytes (magic 0x0000 08 D, then D big-endian int32 sizes), uint8."""
    dims = content[3]
    shape = [int.from_bytes(content[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return torch.frombuffer(bytearray(content), dtype=torch.uint8, offset=4 + 4 * dims).view(shape)


@dataclass(frozen=True, eq=False)
class RawData:
    """The verified files as tensors. Shared by the in-process cache: never modify them in place."""

    train_images: torch.Tensor  # uint8 [60000, 28, 28], pixel values 0..255
    train_labels: torch.Tensor  # int64 [60000], indices into CLASSES
    test_images: torch.Tensor  # uint8 [10000, 28, 28]
    test_labels: torch.Tensor  # int64 [10000]
    digest: str
    source: Path  # directory the files were read from


@functools.lru_cache(maxsize=4)
def _load_verified(directory: Path, file_stamps: tuple) -> RawData:
    # `file_stamps` (names, sizes, mtimes) is part of the cache key only: a replaced file reloads.
    # Labels first: they are small, so a damaged labels file fails in milliseconds.
    in_check_order = sorted(FILES, key=lambda name: "images" in name)
    arrays = {name: _idx_tensor(_verified_bytes(directory, name)) for name in in_check_order}
    return RawData(
        train_images=arrays["train-images-idx3-ubyte"],
        train_labels=arrays["train-labels-idx1-ubyte"].long(),
        test_images=arrays["t10k-images-idx3-ubyte"],
        test_labels=arrays["t10k-labels-idx1-ubyte"].long(),
        digest=DIGEST,
        source=directory,
    )


def load_raw(data_dir: str | os.PathLike | None = None) -> RawData:
    """Locate, verify and read the four files; cached per directory for the life of the process."""
    directory = locate_data_dir(data_dir)
    candidates = [directory / f"{name}{suffix}" for name in FILES for suffix in ("", ".gz")]
    stamps = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in candidates if p.is_file())
    return _load_verified(directory, stamps)


def dataset_digest(data_dir: str | os.PathLike | None = None) -> str:
    """Short stable digest of the verified data, for tagging runs."""
    return load_raw(data_dir).digest


def normalise(images: torch.Tensor) -> torch.Tensor:
    """Pixel values 0..255 of shape [N, 28, 28] (any dtype) -> float32 [N, 784], (x/255 - MEAN)/STD."""
    return ((images.reshape(len(images), IMAGE_PIXELS).float() / 255.0) - MEAN) / STD


@dataclass(eq=False)
class Splits:
    """Normalised, flattened images and labels of train / validation / test, all on one device."""

    train_x: torch.Tensor  # float32 [N_train, 784]
    train_y: torch.Tensor  # int64 [N_train]
    val_x: torch.Tensor  # float32 [N_val, 784]; N_val may be 0
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: float  # the pixel mean / std used to normalise, in [0, 1] units
    std: float
    digest: str
    classes: tuple[str, ...] = CLASSES

    @property
    def device(self) -> torch.device:
        """Where the data lives, and so where a run on it trains (trainer.splits_for puts it there)."""
        return self.train_x.device


SPLIT_SEED = 0  # every run draws the same validation split: runs are compared on the same images


def stratified_split(labels: torch.Tensor, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (train_idx, val_idx): every class gives val_size * its share, rounded by largest remainder.

    Which samples of a class go to validation, and which classes get the leftover units of
    rounding, are drawn from a generator seeded with `seed`, so one seed gives one split.
    """
    labels = labels.cpu().long()
    if not 0 <= val_size <= len(labels):
        raise ValueError(f"val_size must be in [0, {len(labels)}], got {val_size}")
    generator = torch.Generator().manual_seed(seed)
    shuffled = torch.randperm(len(labels), generator=generator)
    grouped = shuffled[torch.argsort(labels[shuffled], stable=True)]  # by class, random inside a class
    counts = torch.bincount(labels)
    exact = counts.double() * val_size / len(labels)
    quota = exact.floor().long()
    leftover = val_size - int(quota.sum())
    tie_order = torch.randperm(len(counts), generator=generator)  # random tie-break between classes
    by_remainder = tie_order[torch.argsort((exact - quota)[tie_order], descending=True, stable=True)]
    quota[by_remainder[:leftover]] += 1
    class_start = torch.cumsum(counts, 0) - counts
    sorted_labels = labels[grouped]
    rank_in_class = torch.arange(len(labels)) - class_start[sorted_labels]
    in_val = rank_in_class < quota[sorted_labels]
    return grouped[~in_val].sort().values, grouped[in_val].sort().values


def load_splits(
    data_dir: str | os.PathLike | None = None,
    *,
    val_size: int = 10_000,
    seed: int = SPLIT_SEED,
    device: str | torch.device = "cpu",
) -> Splits:
    """Train and validation from the 60k training images (stratified, seeded); test = the 10k t10k files."""
    raw = load_raw(data_dir)
    train_idx, val_idx = stratified_split(raw.train_labels, val_size, seed)

    def to_device(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # uint8 travels to the device (4x less than float32) and is normalised there.
        return normalise(images.to(device)), labels.to(device)

    train_x, train_y = to_device(raw.train_images[train_idx], raw.train_labels[train_idx])
    val_x, val_y = to_device(raw.train_images[val_idx], raw.train_labels[val_idx])
    test_x, test_y = to_device(raw.test_images, raw.test_labels)
    return Splits(train_x, train_y, val_x, val_y, test_x, test_y, MEAN, STD, raw.digest)


def _rotate(images: torch.Tensor, angles: torch.Tensor, fill: float, shifts: torch.Tensor | None = None,
            mirror: torch.Tensor | None = None) -> torch.Tensor:
    """Mirror left-right where `mirror` [M] is True, then rotate [M, 1, 28, 28] images by `angles`
    (radians, counter-clockwise as displayed) about the centre, then move them by `shifts` [M, 2]
    pixels (x right, y down): one affine resampling, whatever is switched on.

    Bilinear; pixels that come from outside the frame get `fill`. grid_sample pads with 0,
    so we rotate (images - fill) and add fill back, which is exact since interpolation is linear.
    """
    # Output pixel (x, y) samples the input at R (x, y) - t, mirrored in x; as y points down,
    # that turns the picture counter-clockwise by `angle` on screen, like torchvision's rotate.
    # Grid coordinates span [-1, 1] over 28 pixels (one pixel is 2/28), and pixel centres sit
    # at (2i + 1)/28 - 1, symmetric about 0, so the mirror maps centres onto centres exactly.
    cos, sin = torch.cos(angles), torch.sin(angles)
    sign = torch.ones_like(angles) if mirror is None else 1 - 2 * mirror.to(angles.dtype)  # -1: mirror
    offset = torch.zeros(angles.shape[0], 2, dtype=angles.dtype, device=angles.device)
    if shifts is not None:
        offset = -shifts.to(angles.dtype) * (2.0 / IMAGE_SIDE)
    # sample_x = sign (cos x - sin y + t_x),  sample_y = sin x + cos y + t_y, for every member:
    per_x = torch.stack([sign * cos, sin], dim=1)  # [M, 2]: coefficients of x in (sample_x, sample_y)
    per_y = torch.stack([-sign * sin, cos], dim=1)
    constant = offset * torch.stack([sign, torch.ones_like(sign)], dim=1)
    centres = (torch.arange(IMAGE_SIDE, dtype=angles.dtype, device=angles.device) * 2 + 1) / IMAGE_SIDE - 1
    # Built as [M, 2, 28, 28] (element-wise work on rows of 28, not pairs), then laid out as
    # grid_sample's [M, 28, 28, 2]; affine_grid's batched 3x2 products are slow on the CPU.
    across, down = centres.view(1, 1, 1, -1), centres.view(1, 1, -1, 1)
    grid = per_x[:, :, None, None] * across + per_y[:, :, None, None] * down + constant[:, :, None, None]
    grid = grid.permute(0, 2, 3, 1).contiguous()
    shifted = F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return shifted + fill


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    flip: bool,
    rotate_degrees: float,
    translate_pixels: int = 0,
    mean: float = MEAN,
    std: float = STD,
) -> torch.Tensor:
    """Randomly flip (p = 0.5), rotate (uniform in +-rotate_degrees) and shift (whole pixels,
    uniform in +-translate_pixels on each axis) each sample of x [..., B, 784].

    The whole batch at once on x's device; `generator` must live on that device. Without any
    augmentation x itself is returned and no random numbers are drawn.
    """
    if rotate_degrees < 0:
        raise ValueError(f"rotate_degrees must be >= 0, got {rotate_degrees}")
    if not flip and rotate_degrees == 0 and translate_pixels == 0:
        return x
    images = x.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)
    count = images.shape[0]
    flipped = torch.rand(count, generator=generator, device=x.device) < 0.5 if flip else None
    if rotate_degrees == 0 and translate_pixels == 0:  # flips alone: an exact copy, no resampling
        return torch.where(flipped[:, None, None, None], images.flip(-1), images).reshape(x.shape)
    angles = torch.zeros(count, device=x.device, dtype=x.dtype)
    if rotate_degrees > 0:
        uniform = torch.rand(count, generator=generator, device=x.device, dtype=x.dtype)
        angles = (2 * uniform - 1) * math.radians(rotate_degrees)
    shifts = None
    if translate_pixels > 0:
        shifts = torch.randint(-translate_pixels, translate_pixels + 1, (count, 2), generator=generator,
                               device=x.device)
    images = _rotate(images, angles, fill=-mean / std, shifts=shifts, mirror=flipped)  # -mean/std: black
    return images.reshape(x.shape)
