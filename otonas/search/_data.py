"""Data for ``otonas search``: ``digits`` (built in), ``synthetic``, ``imagefolder:PATH``,
``cifar10:ROOT``, ``fashionmnist:ROOT``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from .._errors import UsageError

__all__ = ["DataSpec", "load_data", "DATASETS"]

DATASETS = ("digits", "synthetic", "imagefolder:PATH", "cifar10:ROOT", "fashionmnist:ROOT")


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
    from .._torchvision import import_torchvision

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
    norm = T.Normalize((0.2860,), (0.3530,))
    train = tv.datasets.FashionMNIST(root, train=True, download=download,
                                     transform=T.Compose([T.RandomCrop(28, padding=2), T.ToTensor(), norm]))
    val = tv.datasets.FashionMNIST(root, train=False, download=download, transform=T.Compose([T.ToTensor(), norm]))
    return DataSpec(f"fashionmnist:{root}", train, val, (1, 28, 28), 10)


def load_data(spec: str, *, seed: int = 0, val_fraction: float = 0.2, download: bool = False,
              synthetic_shape: tuple[int, ...] = (3, 16, 16), image_size: int | None = None) -> DataSpec:
    """Resolve a DATA string (see ``DATASETS``)."""
    kind, _, arg = spec.partition(":")
    if kind == "digits" and not arg:
        return _digits(seed, val_fraction)
    if kind == "synthetic" and not arg:
        return _synthetic(seed, val_fraction, synthetic_shape)
    if kind in ("imagefolder", "cifar10", "fashionmnist"):
        if not arg:
            raise UsageError(f"--data {spec!r} needs a path: {kind}:PATH")
        try:
            return _torchvision_dataset(kind, arg, seed, val_fraction, download, image_size)
        except UsageError:
            raise
        except (RuntimeError, FileNotFoundError, OSError) as e:
            raise UsageError(f"--data {spec!r}: {e}") from None
    raise UsageError(f"unknown --data {spec!r}; use one of {', '.join(DATASETS)}")
