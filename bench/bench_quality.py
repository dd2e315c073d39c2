"""Accuracy against FLOPs kept on sklearn's digits (8×8, 10 classes; 1,347 train / 450 test images),
tiny ``search_spaces:resnet20``, for three ways of pruning at the same total epochs:

- **otonas**: DHSPG trains once (projection from 8/30 to 20/30 of the epochs, λ = 2) to the target
  group sparsity; the built subnet is evaluated;
- **tp**: plain SGD for 2/3 of the epochs, Torch-Pruning ``MagnitudePruner`` (L2, pruning ratio
  = the level, classifier ignored), fine-tune for the last 1/3 (lr 0.01, cosine);
- **random**: channels chosen at random at initialisation (Torch-Pruning, ``RandomImportance``,
  pruning ratio = the level, the same shapes rule as **tp**), then trained for all the epochs.

All use SGD momentum 0.9, weight decay 1e-4, batch 64, one-cycle lr up to 0.1 (fine-tune
excepted). FLOPs are counted the same way for every network (``otonas.analyze(net).costs()``).

    python bench/bench_quality.py [--levels 0.3,0.5,0.7] [--seeds 0,1,2] [--epochs 30] [--methods ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import otonas  # noqa: E402
import search_spaces  # noqa: E402
from otonas.optim import DHSPG, ForcedProjectionWarning  # noqa: E402

BATCH = 64


@dataclass(frozen=True)
class Digits:
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def load_digits() -> Digits:
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    data = sk_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.25, random_state=0, stratify=data.target)
    x = (x - x[tr].mean()) / x[tr].std()
    return Digits(x[tr], y[tr], x[te], y[te])


def make_net() -> nn.Module:
    return search_spaces.create("resnet20", size="tiny", in_chans=1, num_classes=10)


def flops(net: nn.Module, x: Tensor) -> int:
    return otonas.analyze(net, (x,)).costs().flops


def accuracy(net: nn.Module, d: Digits) -> float:
    net.eval()
    with torch.no_grad():
        return float((net(d.x_test).argmax(1) == d.y_test).float().mean()) * 100


def train(net: nn.Module, d: Digits, opt: torch.optim.Optimizer, epochs: int, seed: int, *, one_cycle: bool = True) -> None:
    gen = torch.Generator().manual_seed(seed)
    n = len(d.y_train)
    total = epochs * (n // BATCH)
    sched: torch.optim.lr_scheduler.LRScheduler
    if one_cycle:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total, pct_start=0.15, cycle_momentum=False)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(n, generator=gen)
        for i in range(n // BATCH):
            b = perm[i * BATCH:(i + 1) * BATCH]
            F.cross_entropy(net(d.x_train[b]), d.y_train[b]).backward()
            opt.step()
            opt.zero_grad()
            sched.step()


def sgd(net: nn.Module, lr: float = 0.1) -> torch.optim.SGD:
    return torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)


def run_dense(d: Digits, level: float, epochs: int, seed: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    net = make_net()
    train(net, d, sgd(net), epochs, seed)
    return net, net


def run_otonas(d: Digits, level: float, epochs: int, seed: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    net = make_net()
    space = otonas.analyze(net, (d.x_train[:2],))
    spe = len(d.y_train) // BATCH
    opt = DHSPG(space, lr=0.1, momentum=0.9, weight_decay=1e-4, lmbda=2.0, target_group_sparsity=level,
                start_step=round(epochs * 8 / 30) * spe, end_step=round(epochs * 20 / 30) * spe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ForcedProjectionWarning)
        train(net, d, opt, epochs, seed)
    return net, otonas.build(space)


def run_tp(d: Digits, level: float, epochs: int, seed: int) -> tuple[nn.Module, nn.Module]:
    import torch_pruning as tp

    torch.manual_seed(seed)
    net = make_net()
    pre = round(epochs * 2 / 3)
    train(net, d, sgd(net), pre, seed)
    net.eval()
    head = [m for m in net.modules() if isinstance(m, nn.Linear) and m.out_features == 10]
    pruner = tp.pruner.MagnitudePruner(net, d.x_train[:2], importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=level, ignored_layers=head)
    pruner.step()
    train(net, d, sgd(net, lr=0.01), epochs - pre, seed + 1, one_cycle=False)
    return net, net


def run_random(d: Digits, level: float, epochs: int, seed: int) -> tuple[nn.Module, nn.Module]:
    # Torch-Pruning with random importance at initialisation: an ordinary nn.Module whose BatchNorm
    # still trains (otonas.build returns an inference graph, BatchNorm on running statistics).
    import torch_pruning as tp

    torch.manual_seed(seed)
    net = make_net().eval()
    head = [m for m in net.modules() if isinstance(m, nn.Linear) and m.out_features == 10]
    tp.pruner.MagnitudePruner(net, d.x_train[:2], importance=tp.importance.RandomImportance(),
                              pruning_ratio=level, ignored_layers=head).step()
    train(net, d, sgd(net), epochs, seed)
    return net, net


METHODS: dict[str, Callable[[Digits, float, int, int], tuple[nn.Module, nn.Module]]] = {
    "dense SGD": run_dense, "otonas DHSPG": run_otonas, "TP magnitude + fine-tune": run_tp, "random + train": run_random}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="0.3,0.5,0.7")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default=",".join(METHODS), help="a comma-separated subset of: " + ", ".join(METHODS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    d = load_digits()
    base = flops(make_net(), d.x_train[:2])
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"| method | level | FLOPs kept | params kept | test accuracy (%) | seeds | s per run |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    p_full = sum(p.numel() for p in make_net().parameters())
    for method in args.methods.split(","):
        fn = METHODS[method]
        for level in ([0.0] if method == "dense SGD" else [float(s) for s in args.levels.split(",")]):
            accs, kept, pk, secs = [], [], [], []
            for seed in seeds:
                t = time.perf_counter()
                trained, sub = fn(d, level, args.epochs, seed)
                secs.append(time.perf_counter() - t)
                accs.append(accuracy(sub, d))
                kept.append(flops(sub, d.x_train[:2]) / base)
                pk.append(sum(p.numel() for p in sub.parameters()) / p_full)
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(f"| {method} | {level:.1f} | {statistics.mean(kept):.1%} | {statistics.mean(pk):.1%} | "
                  f"{statistics.mean(accs):.2f} ± {sd:.2f} | {len(seeds)} | {statistics.mean(secs):.1f} |", flush=True)


if __name__ == "__main__":
    main()
