"""Image sets: the IDX reader on hand-built files, Fashion-MNIST when installed, digits always."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest

from mechscope.data.images import ImageSetError, fashion_mnist_dir, load_images, read_idx


def _write_idx(path, array: np.ndarray, dtype_code: int = 0x08) -> None:
    head = b"\x00\x00" + bytes([dtype_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + array.astype(np.uint8).tobytes())


def test_idx_round_trip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), a)


def test_idx_refuses_other_types_and_truncation(tmp_path):
    a = np.zeros((2, 2), dtype=np.uint8)
    _write_idx(tmp_path / "f.gz", a, dtype_code=0x0D)
    with pytest.raises(ImageSetError, match="0x0d"):
        read_idx(tmp_path / "f.gz")
    with gzip.open(tmp_path / "t.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x02" + struct.pack(">2I", 5, 5) + b"\x00" * 7)
    with pytest.raises(ImageSetError, match="truncated"):
        read_idx(tmp_path / "t.gz")


def test_missing_set_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHSCOPE_FASHION_MNIST", str(tmp_path))
    with pytest.raises(ImageSetError, match="apt-get install dataset-fashion-mnist"):
        load_images("fashion-mnist", "test")
    with pytest.raises(ImageSetError, match="unknown image set"):
        load_images("cifar")


def test_digits_split_is_disjoint_and_complete():
    tr, te = load_images("digits", "train"), load_images("digits", "test")
    assert len(tr.labels) + len(te.labels) == 1797 and tr.images.shape[1:] == (8, 8)
    assert int(tr.images.max()) == 255 and set(te.labels.tolist()) == set(range(10))


@pytest.mark.skipif(
    not (fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz").exists() and not os.environ.get("CI"),
    reason="Fashion-MNIST not installed (make test installs it; CI requires it)",
)
def test_fashion_mnist_real_files():
    te = load_images("fashion-mnist", "test")
    assert te.images.shape == (10000, 28, 28) and te.labels.shape == (10000,)
    assert np.bincount(te.labels.numpy()).tolist() == [1000] * 10  # the test split is balanced by construction
