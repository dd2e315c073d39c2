"""Data for ``otonas search``: ``digits`` (built in), ``synthetic``, ``imagefolder:PATH``,
``cifar10:ROOT``, ``fashionmnist`` / ``fashionmnist:ROOT``.

``fashionmnist`` reads the four IDX files of Fashion-MNIST (``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each
gzipped or not) itself, with numpy, offline and without torchvision: from Debian's package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) when no ROOT is given, else
from ROOT itself or torchvision's layout ``ROOT/FashionMNIST/raw``. Only ``--download`` goes
through torchvision, to fetch the files into ROOT. The 60,000 training images are the training
set, the 10,000 test images the validation set; ``load_data(..., limit=N)`` keeps a seeded,
class-balanced subset of at most N training and N // 5 validation samples (any dataset).
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from ..errors import UsageError

__all__ = ["DataSpec", "load_data", "DATASETS"]

DATASETS = ("digits", "synthetic", "imagefolder:PATH", "cifar10:ROOT", "fashionmnist", "fashionmnist:ROOT")

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # where Debian's dataset-fashion-mnist puts the files
_FASHION_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
                  "val_images": "t10k-images-idx3-ubyte", "val_labels": "t10k-labels-idx1-ubyte"}
_FASHION_MEAN, _FASHION_STD = 0.2860, 0.3530


@dataclass
class DataSpec:
    name: str
    train: Dataset
    val: Dataset
    input_shape: tuple[int, ...]  # one sample
    num_classes: int
    augment: Any = None  # a function (batch, generator) -> batch applied to training batches


def _shift_augment(pad: int):
    """Random translation by up to ``pad`` pixels (zero padding), deterministic from the generator."""
    def apply(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        rows = (dy[:, None] + torch.arange(h)[None]).view(b, 1, h, 1).expand(b, x.shape[1], h, w + 2 * pad)
        out = padded.gather(2, rows)
        cols = (dx[:, None] + torch.arange(w)[None]).view(b, 1, 1, w).expand(b, x.shape[1], h, w)
        return out.gather(3, cols)
    return apply


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(n * val_fraction))
    return perm[k:], perm[:k]


def _digits(seed: int, val_fraction: float) -> DataSpec:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    tr, va = _split(len(y), val_fraction, seed)
    mean, std = x[tr].mean(), x[tr].std()
    x = (x - mean) / std
    return DataSpec("digits", TensorDataset(x[tr], y[tr]), TensorDataset(x[va], y[va]), (1, 8, 8), 10,
                    _shift_augment(1))


def _synthetic(seed: int, val_fraction: float, shape: tuple[int, ...], classes: int = 4, n: int = 512) -> DataSpec:
    """Separable random data: each class has its own mean pattern plus noise."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn((classes, *shape), generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    x = means[y] + 0.8 * torch.randn((n, *shape), generator=gen)
    tr, va = _split(n, val_fraction, seed)
    return DataSpec("synthetic", TensorDataset(x[tr], y[tr]), TensorDataset(x[va], y[va]), tuple(shape), classes)


def _torchvision_dataset(kind: str, root: str, seed: int, val_fraction: float, download: bool,
                         image_size: int | None) -> DataSpec:
    from ..models import import_torchvision

    tv = import_torchvision()
    T = tv.transforms
    if kind != "imagefolder" and not download and not os.path.isdir(root):
        raise UsageError(f"{kind} data not found under {root!r}; pass --download to fetch it there, "
                         "or point DATA at the folder that holds it")
    if kind == "imagefolder":
        if not os.path.isdir(root):
            raise UsageError(f"DATA folder {root!r} does not exist; imagefolder:PATH needs a folder with one "
                             "sub-folder of images per class")
        size = image_size or 64
        norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        train_t = T.Compose([T.RandomResizedCrop(size, scale=(0.6, 1.0)), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        val_t = T.Compose([T.Resize(int(size * 1.14)), T.CenterCrop(size), T.ToTensor(), norm])
        full_train = tv.datasets.ImageFolder(root, transform=train_t)
        full_val = tv.datasets.ImageFolder(root, transform=val_t)
        tr, va = _split(len(full_train), val_fraction, seed)
        return DataSpec(f"imagefolder:{root}", torch.utils.data.Subset(full_train, tr.tolist()),
                        torch.utils.data.Subset(full_val, va.tolist()), (3, size, size), len(full_train.classes))
    if kind == "cifar10":
        norm = T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
        train = tv.datasets.CIFAR10(root, train=True, download=download,
                                    transform=T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
                                                         T.ToTensor(), norm]))
        val = tv.datasets.CIFAR10(root, train=False, download=download, transform=T.Compose([T.ToTensor(), norm]))
        return DataSpec(f"cifar10:{root}", train, val, (3, 32, 32), 10)
    raise UsageError(f"unknown torchvision dataset {kind!r}")


def _fashion_dirs(root: str | None) -> list[str]:
    """The folders searched, in order: ROOT itself, then torchvision's ROOT/FashionMNIST/raw."""
    base = FASHION_MNIST_DIR if root is None else root
    return [base, os.path.join(base, "FashionMNIST", "raw")]


def _find_fashion(root: str | None) -> dict[str, str] | None:
    """Paths of the four IDX files from the first folder that holds all four (uncompressed preferred)."""
    for d in _fashion_dirs(root):
        found = {}
        for key, name in _FASHION_FILES.items():
            for candidate in (os.path.join(d, name), os.path.join(d, name + ".gz")):
                if os.path.isfile(candidate):
                    found[key] = candidate
                    break
        if len(found) == len(_FASHION_FILES):
            return found
    return None


def _fashion_missing(root: str | None) -> UsageError:
    searched = ", ".join(_fashion_dirs(root))
    names = ", ".join(f"{n}[.gz]" for n in _FASHION_FILES.values())
    return UsageError(f"Fashion-MNIST not found: looked for {names} in {searched}; install Debian's package "
                      f"(`apt-get install dataset-fashion-mnist`, files in {FASHION_MNIST_DIR}), or pass "
                      "fashionmnist:ROOT with a folder that holds the four IDX files (--download fetches them "
                      "into ROOT through torchvision)")


@functools.lru_cache(maxsize=8)
def _read_idx(path: str) -> np.ndarray:
    """Decode one IDX file of unsigned bytes (gzipped or not); the array is read-only and shared."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise UsageError(f"cannot read IDX file {path!r}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] == 0:
        raise UsageError(f"{path!r} is not an IDX file of unsigned bytes (magic {raw[:4].hex() or 'missing'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)) if len(raw) >= header else ()
    if len(raw) < header or len(raw) - header != int(np.prod(dims)):
        raise UsageError(f"IDX file {path!r} is truncated or has a wrong header (dims {dims}, {len(raw)} bytes)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _fashion_arrays(paths: dict[str, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    out = []
    for split in ("train", "val"):
        x, y = _read_idx(paths[f"{split}_images"]), _read_idx(paths[f"{split}_labels"])
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(x) != len(y):
            raise UsageError(f"Fashion-MNIST files {paths[f'{split}_images']!r} and {paths[f'{split}_labels']!r} "
                             f"do not fit together: images {x.shape}, labels {y.shape}; expected (N, 28, 28) and (N,)")
        if len(y) and int(y.max()) > 9:
            raise UsageError(f"{paths[f'{split}_labels']!r} has label {int(y.max())}; Fashion-MNIST has 10 classes")
        out += [x, y]
    return out[0], out[1], out[2], out[3]


def _balanced_subset(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """At most ``k`` indices, seeded, as balanced over the classes as the counts allow, in file order."""
    n = len(labels)
    if k >= n:
        return np.arange(n)
    perm = np.random.default_rng(seed).permutation(n)
    lab = labels[perm]
    order = np.argsort(lab, kind="stable")
    _, starts, counts = np.unique(lab[order], return_index=True, return_counts=True)
    rank = np.empty(n, dtype=np.int64)  # position of each drawn sample among the draws of its class
    rank[order] = np.arange(n) - np.repeat(starts, counts)
    pick = perm[np.lexsort((np.arange(n), rank))[:k]]  # round-robin over the classes
    return np.sort(pick)


def _to_tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    xt = torch.from_numpy(x.astype(np.float32)).unsqueeze(1)
    xt.mul_(1.0 / (255.0 * _FASHION_STD)).sub_(_FASHION_MEAN / _FASHION_STD)
    return TensorDataset(xt, torch.from_numpy(y.astype(np.int64)))


def _fashionmnist(root: str | None, seed: int, download: bool, limit: int | None) -> DataSpec:
    paths = _find_fashion(root)
    if paths is None and download:
        if root is None:
            raise UsageError(f"Fashion-MNIST is not in {FASHION_MNIST_DIR}; --download needs a folder to fetch it "
                             "into: --data fashionmnist:ROOT (or `apt-get install dataset-fashion-mnist`)")
        from ..models import import_torchvision

        tv = import_torchvision()
        try:
            for train in (True, False):  # writes ROOT/FashionMNIST/raw/*
                tv.datasets.FashionMNIST(root, train=train, download=True)
        except (RuntimeError, OSError) as e:
            raise UsageError(f"--data fashionmnist:{root} --download: {e}") from None
        paths = _find_fashion(root)
    if paths is None:
        raise _fashion_missing(root)
    xtr, ytr, xva, yva = _fashion_arrays(paths)
    if limit is not None:  # subset before converting: a small slice costs little memory
        tr, va = _balanced_subset(ytr, limit, seed), _balanced_subset(yva, max(1, limit // 5), seed + 1)
        xtr, ytr, xva, yva = xtr[tr], ytr[tr], xva[va], yva[va]
    name = "fashionmnist" if root is None else f"fashionmnist:{root}"
    return DataSpec(name, _to_tensors(xtr, ytr), _to_tensors(xva, yva), (1, 28, 28), 10, _shift_augment(2))


def _limit(data: DataSpec, limit: int, seed: int) -> DataSpec:
    """Seeded subsets of at most ``limit`` training and ``limit // 5`` validation samples."""
    def cut(ds: Dataset, k: int, s: int) -> Dataset:
        n = len(ds)  # type: ignore[arg-type]
        if k >= n:
            return ds
        if isinstance(ds, TensorDataset):
            idx = torch.from_numpy(_balanced_subset(ds.tensors[-1].numpy(), k, s))
            return TensorDataset(*(t[idx] for t in ds.tensors))
        return torch.utils.data.Subset(ds, np.sort(np.random.default_rng(s).permutation(n)[:k]).tolist())
    data.train = cut(data.train, limit, seed)
    data.val = cut(data.val, max(1, limit // 5), seed + 1)
    return data


def load_data(spec: str, *, seed: int = 0, val_fraction: float = 0.2, download: bool = False,
              synthetic_shape: tuple[int, ...] = (3, 16, 16), image_size: int | None = None,
              limit: int | None = None) -> DataSpec:
    """Resolve a DATA string (see ``DATASETS``).

    ``limit``: keep a seeded subset (class-balanced where the labels are tensors) of at most
    ``limit`` training and ``max(1, limit // 5)`` validation samples.
    """
    if limit is not None and limit < 1:
        raise UsageError(f"limit must be a positive number of samples, not {limit}")
    kind, _, arg = spec.partition(":")
    data: DataSpec
    if kind == "digits" and not arg:
        data = _digits(seed, val_fraction)
    elif kind == "synthetic" and not arg:
        data = _synthetic(seed, val_fraction, synthetic_shape)
    elif kind == "fashionmnist":
        if spec.endswith(":") and not arg:
            raise UsageError(f"--data {spec!r}: give a folder after the colon, or plain 'fashionmnist' for "
                             f"{FASHION_MNIST_DIR}")
        return _fashionmnist(arg or None, seed, download, limit)
    elif kind in ("imagefolder", "cifar10"):
        if not arg:
            raise UsageError(f"--data {spec!r} needs a path: {kind}:PATH")
        try:
            data = _torchvision_dataset(kind, arg, seed, val_fraction, download, image_size)
        except UsageError:
            raise
        except (RuntimeError, FileNotFoundError, OSError) as e:
            raise UsageError(f"--data {spec!r}: {e}") from None
    else:
        raise UsageError(f"unknown --data {spec!r}; use one of {', '.join(DATASETS)}")
    return data if limit is None else _limit(data, limit, seed)
