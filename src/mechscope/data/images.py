"""Real image sets that work offline, for classifiers trained here (data dimensionality, backdoors).

Sources (a registry, :data:`IMAGE_SETS`):

- ``fashion-mnist``: Zalando's Fashion-MNIST, 60,000 train / 10,000 test 28×28 grey images in 10
  classes, read from the gzipped IDX files of Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist``) or from the folder named by ``$MECHSCOPE_FASHION_MNIST``.
- ``digits``: scikit-learn's 1,797 8×8 handwritten digits (16 grey levels, scaled to 0–255), split
  deterministically 80/20 by a seeded permutation. Always available; small.

IDX format (LeCun): big-endian magic ``0x0000 type ndim``, then ``ndim`` uint32 sizes, then the data;
only unsigned-byte data (type 0x08) is accepted, anything else is refused by name.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from mechscope.errors import MechscopeError

Split = Literal["train", "test"]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


class ImageSetError(MechscopeError, RuntimeError):
    """An image set is missing or its files are not what we expect (the message names the fix)."""


@dataclass(frozen=True)
class ImageSet:
    """One split of an image set.

    ``images``: uint8 ``[N, H, W]`` (grey levels 0–255); ``labels``: int64 ``[N]`` in
    ``[0, n_classes)``; ``classes``: one name per class.
    """

    name: str
    split: str
    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def as_float(self) -> Tensor:
        """Images as float32 ``[N, H, W]`` in [0, 1]."""
        return self.images.float() / 255.0

    def subset(self, n: int, seed: int = 0) -> ImageSet:
        """A seeded random subset of ``n`` images (all of them when ``n`` ≥ N)."""
        if n >= len(self.labels):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self.labels), generator=g)[:n]
        return ImageSet(self.name, self.split, self.images[idx], self.labels[idx], self.classes)


def read_idx(path: str | Path) -> np.ndarray:
    """Read one (optionally gzipped) IDX file of unsigned bytes into an array of its stated shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) != 4 or head[:2] != b"\x00\x00":
                raise ImageSetError(f"{path}: not an IDX file (bad magic {head!r})")
            dtype_code, ndim = head[2], head[3]
            if dtype_code != 0x08:
                raise ImageSetError(
                    f"{path}: IDX data type 0x{dtype_code:02x} is not supported (only unsigned bytes, 0x08)"
                )
            shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
            data = f.read()
    except (OSError, EOFError, struct.error) as e:
        raise ImageSetError(f"{path}: cannot read IDX file ({e}); reinstall the data set") from e
    expected = int(np.prod(shape))
    if len(data) != expected:
        raise ImageSetError(
            f"{path}: IDX file holds {len(data)} bytes, its header says {expected}; the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def fashion_mnist_dir() -> Path:
    """Where Fashion-MNIST is read from: ``$MECHSCOPE_FASHION_MNIST`` or Debian's install path."""
    return Path(os.environ.get("MECHSCOPE_FASHION_MNIST", FASHION_MNIST_DIR))


def _fashion_mnist(split: Split) -> ImageSet:
    root = fashion_mnist_dir()
    prefix = "train" if split == "train" else "t10k"
    images_path, labels_path = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    for p in (images_path, labels_path):
        if not p.exists():
            raise ImageSetError(
                f"Fashion-MNIST file {p} is missing: run `apt-get install dataset-fashion-mnist` "
                "(or set MECHSCOPE_FASHION_MNIST to a folder holding the gzipped IDX files)"
            )
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ImageSetError(f"{root}: images {images.shape} and labels {labels.shape} do not pair up")
    return ImageSet(
        "fashion-mnist",
        split,
        torch.from_numpy(images.copy()),
        torch.from_numpy(labels.astype(np.int64)),
        FASHION_MNIST_CLASSES,
    )


def _digits(split: Split) -> ImageSet:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))
    cut = int(0.8 * len(images))
    idx = order[:cut] if split == "train" else order[cut:]
    return ImageSet(
        "digits",
        split,
        torch.from_numpy(images[idx]),
        torch.from_numpy(d.target[idx].astype(np.int64)),
        tuple(str(i) for i in range(10)),
    )


IMAGE_SETS: dict[str, Callable[[Split], ImageSet]] = {"fashion-mnist": _fashion_mnist, "digits": _digits}


def load_images(name: str = "fashion-mnist", split: Split = "train") -> ImageSet:
    """Load one split of a registered image set (see :data:`IMAGE_SETS`)."""
    if name not in IMAGE_SETS:
        raise ImageSetError(f"unknown image set {name!r}; choose one of: {', '.join(IMAGE_SETS)}")
    if split not in ("train", "test"):
        raise ImageSetError(f"unknown split {split!r}; choose 'train' or 'test'")
    return IMAGE_SETS[name](split)
