"""`--data fashionmnist`: Debian's IDX files read offline, ROOT folders, missing data, subsets, a tiny fit."""

from __future__ import annotations

import gzip
import os
import shutil
import struct

import numpy as np
import pytest
import torch

from otonas._errors import UsageError
from otonas.search import DATASETS, load_data
from otonas.search import _data

DEFAULT = _data.FASHION_MNIST_DIR
NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
HAVE_DEFAULT = all(os.path.isfile(os.path.join(DEFAULT, n + ".gz")) for n in NAMES)
needs_fashion = pytest.mark.skipif(
    not HAVE_DEFAULT, reason=f"Fashion-MNIST not in {DEFAULT}: `apt-get install dataset-fashion-mnist` (.ci/run does)")


def _write_idx(path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb", compresslevel=1) as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)


def _tiny_set(folder, gz: bool, n_train: int = 60, n_val: int = 20):
    """A small fake Fashion-MNIST in IDX format; pixels encode (class * 20 + noise)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        y = np.arange(n, dtype=np.uint8) % 10
        x = (y[:, None, None] * 20 + rng.integers(0, 20, (n, 28, 28))).astype(np.uint8)
        _write_idx(folder / f"{prefix}-images-idx3-ubyte", x, gz)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", y, gz)
        arrays[prefix] = (x, y)
    return arrays


def test_listed_and_idx_files_decoded_exactly(tmp_path):
    assert "fashionmnist" in DATASETS and "fashionmnist:ROOT" in DATASETS
    arrays = _tiny_set(tmp_path / "gz", gz=True)
    for folder in ("gz", "plain"):
        if folder == "plain":
            _tiny_set(tmp_path / "plain", gz=False)
        d = load_data(f"fashionmnist:{tmp_path / folder}")
        assert d.name == f"fashionmnist:{tmp_path / folder}"
        assert d.input_shape == (1, 28, 28) and d.num_classes == 10 and d.augment is not None
        x, y = d.train.tensors
        assert x.shape == (60, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
        back = x.squeeze(1).numpy() * 0.3530 + 0.2860
        np.testing.assert_allclose(back * 255, arrays["train"][0], atol=1e-3)
        assert torch.equal(y, torch.from_numpy(arrays["train"][1].astype(np.int64)))
        assert len(d.val) == 20


def test_torchvision_layout_still_accepted(tmp_path):
    _tiny_set(tmp_path / "FashionMNIST" / "raw", gz=False)
    d = load_data(f"fashionmnist:{tmp_path}")
    assert len(d.train) == 60 and len(d.val) == 20


def test_missing_folder_names_the_fix(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(UsageError) as e:
        load_data(f"fashionmnist:{missing}")
    msg = str(e.value)
    assert str(missing) in msg and os.path.join(str(missing), "FashionMNIST", "raw") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "fashionmnist:ROOT" in msg
    monkeypatch.setattr(_data, "FASHION_MNIST_DIR", str(missing))  # as on a machine without the package
    with pytest.raises(UsageError, match="apt-get install dataset-fashion-mnist"):
        load_data("fashionmnist")
    with pytest.raises(UsageError, match="fashionmnist:ROOT"):
        load_data("fashionmnist", download=True)  # nowhere to download to
    (tmp_path / "partial").mkdir()
    shutil.copy(__file__, tmp_path / "partial" / "train-images-idx3-ubyte")
    with pytest.raises(UsageError, match="not found"):  # three of the four files missing
        load_data(f"fashionmnist:{tmp_path / 'partial'}")


def test_corrupt_file_is_a_usage_error(tmp_path):
    _tiny_set(tmp_path, gz=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 10)
    with pytest.raises(UsageError, match="truncated"):
        load_data(f"fashionmnist:{tmp_path}")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(UsageError, match="not an IDX file"):
        load_data(f"fashionmnist:{tmp_path}")


def test_limit_is_seeded_and_balanced(tmp_path):
    _tiny_set(tmp_path, gz=True, n_train=200, n_val=100)
    a = load_data(f"fashionmnist:{tmp_path}", limit=50, seed=1)
    b = load_data(f"fashionmnist:{tmp_path}", limit=50, seed=1)
    c = load_data(f"fashionmnist:{tmp_path}", limit=50, seed=2)
    assert len(a.train) == 50 and len(a.val) == 10
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    assert a.train.tensors[1].bincount().tolist() == [5] * 10
    assert a.val.tensors[1].bincount().tolist() == [1] * 10
    assert len(load_data("digits", limit=100).train) == 100
    with pytest.raises(UsageError, match="limit"):
        load_data("digits", limit=0)


@needs_fashion
def test_default_location_full_set():
    d = load_data("fashionmnist")
    assert d.name == "fashionmnist" and d.input_shape == (1, 28, 28) and d.num_classes == 10
    x, y = d.train.tensors
    xv, yv = d.val.tensors
    assert x.shape == (60000, 1, 28, 28) and xv.shape == (10000, 1, 28, 28)
    assert x.dtype == xv.dtype == torch.float32 and y.dtype == yv.dtype == torch.long
    assert y.bincount().tolist() == [6000] * 10 and yv.bincount().tolist() == [1000] * 10
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01
    assert abs(float(xv.mean())) < 0.05 and abs(float(xv.std()) - 1) < 0.05
    out = d.augment(x[:8], torch.Generator().manual_seed(0))
    assert out.shape == (8, 1, 28, 28)


@needs_fashion
def test_root_with_symlinks_and_gzipless_copy(tmp_path):
    ref = load_data("fashionmnist", limit=500)
    (tmp_path / "links").mkdir()
    (tmp_path / "plain").mkdir()
    for n in NAMES:
        os.symlink(os.path.join(DEFAULT, n + ".gz"), tmp_path / "links" / (n + ".gz"))
    for n in NAMES[1:]:  # the labels and test images; the training images stay gzipped
        with gzip.open(os.path.join(DEFAULT, n + ".gz"), "rb") as src, open(tmp_path / "plain" / n, "wb") as dst:
            shutil.copyfileobj(src, dst)
    os.symlink(os.path.join(DEFAULT, NAMES[0] + ".gz"), tmp_path / "plain" / (NAMES[0] + ".gz"))
    for folder in ("links", "plain"):
        d = load_data(f"fashionmnist:{tmp_path / folder}", limit=500)
        assert torch.equal(d.train.tensors[0], ref.train.tensors[0])
        assert torch.equal(d.val.tensors[1], ref.val.tensors[1])


@needs_fashion
def test_small_model_learns_a_slice():
    d = load_data("fashionmnist", limit=2000, seed=0)
    x, y = d.train.tensors
    xv, yv = d.val.tensors[0][:400], d.val.tensors[1][:400]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 5, stride=2), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 12 * 12, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            loss = torch.nn.functional.cross_entropy(model(d.augment(x[idx], gen)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = (model(xv).argmax(1) == yv).float().mean().item()
    assert acc > 0.6, acc
