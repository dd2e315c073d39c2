"""Quality side by side: test accuracy against FLOPs kept, otonas beside four baselines, at the
same total epochs, data, batch size and lr schedule.

Data (fixed, stratified):

- ``fashionmnist``: a subset of Fashion-MNIST read from the four IDX ``.gz`` files in
  ``/usr/share/datasets/fashion-mnist``: 5,000 training images (500 per class) out of the 60k
  training set, 2,000 test images (200 per class) out of the 10k test set, 28×28, picked once
  with ``numpy.random.default_rng(0)``; 6 epochs (78 steps each).
- ``digits``: sklearn's ``load_digits`` (8×8), 1,347 train / 450 test (stratified split,
  ``random_state=0``); 30 epochs (21 steps each: digits is cheap and needs the steps).

Model: tiny ``search_spaces:resnet20`` (widths 4/8/16, 17,462 parameters, one input channel).
``--models resnet18-tiny`` / ``densenet121-tiny`` run the same methods on other architectures (each
into its own ``--out``: the summary does not tell networks apart).

Methods, at the same total epochs E per data set; the same initialisation and batch order per
seed; SGD momentum 0.9, weight decay 5e-4, batch 64; one lr schedule for all, over the E·steps
steps: one-cycle (linear warm-up over the first 15 % from 0.004 to 0.1, then cosine to 0):

- ``dense``: the unpruned network.
- ``otonas``: ``DHSPG(target_flops=t, schedule="progressive", periods=5, score=NormAffineScore())``
  with ``otonas search``'s defaults (``--otonas-score magnitude|taylor|...`` swaps the score, for
  an ablation into its own ``--out`` file): warm-up 1/10 of the steps, projection to 3/10, the rest
  trains the final structure; the built subnet
  (``otonas.build``) is evaluated; ``forced_groups`` is ``metrics()["num_forced_groups"]``.
- ``random_train``: at initialisation, in every family ("cell") of otonas' search space, as many
  random groups as DHSPG's per-family quota for ``t`` (``opt.selector.quotas`` / ``opt.selector.cells``) are zeroed
  and kept at zero for all E epochs; then built and evaluated.
- ``prune_finetune``: dense for round(2E/3) epochs, then in every family the quota's groups of
  lowest L2 norm (over all their slices) are zeroed and kept at zero for the rest (fresh SGD
  momentum, the lr schedule continues); then built and evaluated.
- ``torch_pruning``: dense for round(2E/3) epochs, Torch-Pruning ``MagnitudePruner`` (L2
  importance, ``global_pruning=True``, classifier ignored) at the pruning ratio bisected on
  copies of the trained network so that the FLOPs kept are the largest not above ``t`` (within
  0.2 points when reachable), fine-tune for the rest (fresh SGD momentum, the lr schedule
  continues). Global ranking because on a network this narrow (4/8/16 channels) one per-layer
  ratio only reaches 56.5 % or 36.6 % of the FLOPs near 50 %, 27.4 % or 25.4 % near 25 %.

The DARTS supernet (tiny, digits, 12 epochs, as the main job), in erase mode:

- ``dense``: the whole supernet trained.
- ``otonas``: ``H2SPG(erase_budget=0.5, schedule="progressive", score=TaylorScore())`` with
  ``otonas search``'s erase-mode fractions (warm-up 1/6, projection to 5/12); the built subnet
  is evaluated.
- ``random_erase``: at initialisation, a random valid erasure (random order, each erasing group
  kept when the set stays valid) that keeps at least the FLOPs of otonas' run of the same seed,
  held at zero and trained for all epochs, then built.

``random_train``, ``prune_finetune`` and ``random_erase`` train the full network with the chosen groups held at
exactly zero (weights, BatchNorm scale and shift) rather than the built subnet: the network they
compute is the subnet's, but ``otonas.build`` returns an inference graph (BatchNorm on running
statistics even in ``train()`` mode), which cannot be trained as it is. The subnet is built at the
end and it is what is evaluated and counted.

FLOPs and parameters of every evaluated network are counted the same way,
``otonas.analyze(net, example).costs()``, relative to the dense network's.

Runs go to ``bench/results/quality.json`` (``{"config": ..., "runs": [...]}``) after every run;
a second invocation skips the runs already there (same data, model, method, target, seed, epochs)
whose settings are this config's, and runs again those made under other settings (e.g. after a
change of otonas' schedule only otonas' runs). At the end the summary (mean ± std
per data, target and method; paired differences otonas − each baseline over the seeds) is
printed, written into the Quality section of ``bench/README.md`` and drawn in
``bench/figures/quality.png``. Threads: 1 by default (``--threads``): on this 2-core machine,
shared with other jobs, two intra-op threads made a training step 40× slower than one.

Budget: the default grid is (dense + 4 methods × 2 targets) × (10 Fashion-MNIST seeds + 10 digits
seeds) = 180 runs, plus 3 × 10 supernet runs = 210 runs. Timed at load average ≈ 2-4 (one thread
per run): a Fashion-MNIST run takes 20-50 s at 5,000 training images (≈ 55 minutes for its 90),
a digits run 6-16 s (≈ 15 minutes), a supernet run 30-60 s (≈ 25 minutes): ≈ 95 minutes in one
process, ≈ 50 minutes with ``--jobs 2`` (the default where there are two cores: two processes of
one thread, one data set's and seed's runs in order in each; the results are the same as with
``--jobs 1``, run for run). Ten seeds per data set because the cells are noise-bound (see
``DEFAULT_SEEDS``).

    python bench/bench_quality.py                      # the whole default grid: 210 runs, ≈ 50 min (2 jobs)
    python bench/bench_quality.py --quick              # smoke test: 1 seed, 1 epoch, small subset
    python bench/bench_quality.py --summary-only       # re-draw the summary from the JSON
    options: --data fashionmnist,digits --targets 0.5,0.25 --seeds 0,1,2 --epochs N
             --methods dense,otonas,random_train,prune_finetune,torch_pruning --out PATH
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import math
import os
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import otonas  # noqa: E402
import search_spaces  # noqa: E402
from otonas.optim import DHSPG
from otonas.optim import SCORES, make_score  # noqa: E402

MODEL = "resnet20-tiny"
SUPERNET = "darts-tiny"  # the DARTS supernet of the main job, in erase mode
METHODS = ("dense", "otonas", "random_train", "prune_finetune", "torch_pruning")
ERASE_METHODS = ("dense", "otonas", "random_erase")
BASELINES = ("dense", "random_train", "prune_finetune", "torch_pruning")
DATASETS = ("fashionmnist", "digits")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = ROOT / "bench" / "results" / "quality.json"
README = ROOT / "bench" / "README.md"
FIGURE = ROOT / "bench" / "figures" / "quality.png"
BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"
# Seeds per data set when --seeds is not given. Digits has 450 test images (one image is 0.22
# points) and its cells sit at the dense network's accuracy, seed std 0.4-0.7: five seeds could
# not tell a 0.5-point gap from noise (seeds 0-4 and 5-9 gave opposite signs), so it gets ten;
# Fashion-MNIST's seed std is 0.4-1.4 points on 2,000 test images, and gets ten too.
DEFAULT_SEEDS = {"fashionmnist": 10, "digits": 10}

# Settings every run of one results file shares (the "config" of the JSON).
FULL: dict[str, Any] = {
    "model": MODEL, "batch": 64, "lr_max": 0.1, "lr_warmup": 0.15, "momentum": 0.9, "weight_decay": 5e-4,
    # otonas search's defaults: warm-up 1/10 of the steps, projection to 3/10; the normalization's
    # scale and shift for channels (DHSPG), Taylor for operators (H2SPG, the supernet runs)
    "otonas": {"warmup": 0.1, "projection_end": 0.3, "periods": 5, "schedule": "progressive", "score": "norm_affine",
               "erase_score": "taylor"},
    # the supernet runs use otonas search's erase-mode fractions: warm-up 1/6, projection to 5/12
    "prune_at": "round(2/3 of the epochs)",
    "fashionmnist": {"train": 5000, "test": 2000, "subset_seed": 0, "epochs": 6},
    "digits": {"train": 1347, "test": 450, "split_random_state": 0, "epochs": 30},
    "flops": "otonas.analyze(net, example).costs().flops / dense",
    # the supernet in erase mode (H2SPG, otonas search's default job) against random valid erasure
    "darts": {"data": "digits", "epochs": 12, "erase_budget": 0.5, "warmup": 1 / 6, "projection_end": 5 / 12},
}
QUICK: dict[str, Any] = {**FULL, "fashionmnist": {"train": 1000, "test": 500, "subset_seed": 0, "epochs": 1},
         "digits": {"train": 1347, "test": 450, "split_random_state": 0, "epochs": 1},
         "darts": {**FULL["darts"], "epochs": 1}}


# ---------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Data:
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _stratified(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    per = n // 10
    return np.sort(np.concatenate([rng.permutation(np.nonzero(y == c)[0])[:per] for c in range(10)]))


def load(name: str, cfg: dict[str, Any]) -> Data:
    if name == "fashionmnist":
        c = cfg["fashionmnist"]
        rng = np.random.default_rng(c["subset_seed"])
        xs, ys = _idx(FASHION_DIR / "train-images-idx3-ubyte.gz"), _idx(FASHION_DIR / "train-labels-idx1-ubyte.gz")
        xt, yt = _idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz"), _idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
        tr, te = _stratified(ys, c["train"], rng), _stratified(yt, c["test"], rng)
        x_train = torch.tensor(xs[tr], dtype=torch.float32).unsqueeze(1) / 255.0
        x_test = torch.tensor(xt[te], dtype=torch.float32).unsqueeze(1) / 255.0
        y_train, y_test = torch.tensor(ys[tr], dtype=torch.int64), torch.tensor(yt[te], dtype=torch.int64)
    elif name == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(d.target, dtype=torch.int64)
        tr, te = train_test_split(np.arange(len(y)), test_size=0.25, random_state=cfg["digits"]["split_random_state"],
                                  stratify=d.target)
        x_train, y_train, x_test, y_test = x[tr], y[tr], x[te], y[te]
    else:
        raise SystemExit(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
    mean, std = x_train.mean(), x_train.std()
    return Data((x_train - mean) / std, y_train, (x_test - mean) / std, y_test)


# ---------------------------------------------------------------------------------- training
# Channel-pruning networks (search_spaces entries at size "tiny", one input channel, 10 classes):
# the grid's is MODEL; the others check a choice on other architectures, each into its own --out.
CHANNEL_MODELS = (MODEL, "resnet18-tiny", "densenet121-tiny")
_NET = [MODEL]  # the network the runs of this process make now (run_unit sets it per unit)


def make_net() -> nn.Module:
    return search_spaces.create(_NET[0].removesuffix("-tiny"), size="tiny", in_chans=1, num_classes=10)


def lr_at(step: int, total: int, cfg: dict[str, Any]) -> float:
    """One-cycle: linear warm-up from lr_max/25 to lr_max, then cosine to 0."""
    top, warm = cfg["lr_max"], max(1, round(cfg["lr_warmup"] * total))
    if step < warm:
        return top / 25 + (top - top / 25) * step / warm
    return 0.5 * top * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


class Trainer:
    """The epochs of one run: one batch order per seed, one lr schedule over all the steps."""

    def __init__(self, d: Data, cfg: dict[str, Any], epochs: int, seed: int) -> None:
        self.d, self.cfg, self.epochs = d, cfg, epochs
        self.per_epoch = len(d.y_train) // cfg["batch"]
        self.total = epochs * self.per_epoch
        self.gen = torch.Generator().manual_seed(seed)
        self.step = 0

    def run(self, net: nn.Module, opt: torch.optim.Optimizer, epochs: int,
            after_step: Callable[[], None] | None = None) -> None:
        b, n = self.cfg["batch"], len(self.d.y_train)
        for _ in range(epochs):
            net.train()
            perm = torch.randperm(n, generator=self.gen)
            for i in range(self.per_epoch):
                for g in opt.param_groups:
                    g["lr"] = lr_at(self.step, self.total, self.cfg)
                idx = perm[i * b:(i + 1) * b]
                F.cross_entropy(net(self.d.x_train[idx]), self.d.y_train[idx]).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if after_step is not None:
                    after_step()
                self.step += 1


def sgd(net: nn.Module, cfg: dict[str, Any]) -> torch.optim.SGD:
    return torch.optim.SGD(net.parameters(), lr=cfg["lr_max"], momentum=cfg["momentum"],
                           weight_decay=cfg["weight_decay"])


class Mask:
    """Holds the slices of a set of groups at exactly zero (parameters and momentum buffers)."""

    def __init__(self, space: Any, selected: np.ndarray) -> None:
        params = dict(space.model.named_parameters(remove_duplicate=False))
        sel = torch.from_numpy(np.asarray(selected, dtype=bool))
        self.slices: list[tuple[Tensor, int, Tensor]] = []
        for fqn, entries in space.group_layout().items():
            for dim, g in entries:
                hit = (g >= 0) & sel[g.clamp(min=0)]
                if hit.any():
                    self.slices.append((params[fqn], dim, torch.nonzero(hit).flatten()))
        self.opt: torch.optim.Optimizer | None = None

    @torch.no_grad()
    def __call__(self) -> None:
        for p, dim, where in self.slices:
            p.index_fill_(dim, where, 0.0)
            buf = self.opt.state.get(p, {}).get("momentum_buffer") if self.opt is not None else None
            if buf is not None:
                buf.index_fill_(dim, where, 0.0)


def group_norms(space: Any) -> np.ndarray:
    """The L2 norm of each prunable group over all its parameter slices."""
    sq = np.zeros(space.num_prunable_groups)
    params = dict(space.model.named_parameters(remove_duplicate=False))
    for fqn, entries in space.group_layout().items():
        p = params[fqn].detach()
        for dim, g in entries:
            other = [k for k in range(p.dim()) if k != dim]
            s = (p.pow(2).sum(dim=other) if other else p.pow(2)).double().numpy()
            keep = g.numpy() >= 0
            np.add.at(sq, g.numpy()[keep], s[keep])
    return np.sqrt(sq)


# ---------------------------------------------------------------------------------- per-target caches
class Context:
    """What one data set shares across runs: the data, the dense costs, quotas and TP ratios."""

    def __init__(self, name: str, cfg: dict[str, Any], make: Callable[[], nn.Module] | None = None) -> None:
        self.name, self.cfg = name, cfg
        self.d = load(name, cfg)
        self.example = self.d.x_train[:2]
        dense = otonas.analyze((make or make_net)(), (self.example,)).costs()
        self.dense_flops, self.dense_params = dense.flops, dense.params
        self._quotas: dict[float, tuple[list[np.ndarray], list[int]]] = {}
        self.flops_of: dict[tuple[str, str, int], float] = {}  # (model, method, seed) -> FLOPs kept

    def costs(self, net: nn.Module) -> tuple[float, float]:
        c = otonas.analyze(net, (self.example,)).costs()
        return c.flops / self.dense_flops, c.params / self.dense_params

    def quotas(self, target: float) -> tuple[list[np.ndarray], list[int]]:
        """DHSPG's cells and per-cell quotas for ``target`` (they depend on the shapes only)."""
        if target not in self._quotas:
            net = make_net()
            opt = DHSPG(otonas.analyze(net, (self.example,)), lr=0.1, target_flops=target, warmup_steps=1, end_step=2,
                        schedule="progressive")
            assert opt.selector.cells is not None
            self._quotas[target] = ([np.asarray(c) for c in opt.selector.cells], list(opt.selector.quotas))
        return self._quotas[target]


def tp_prune(net: nn.Module, example: Tensor, ratio: float) -> None:
    """Torch-Pruning's MagnitudePruner, L2 importance, global ranking, the classifier ignored."""
    import torch_pruning as tp

    head = [m for m in net.modules() if isinstance(m, nn.Linear) and m.out_features == 10]
    tp.pruner.MagnitudePruner(net, example, importance=tp.importance.MagnitudeImportance(p=2),
                              pruning_ratio=ratio, global_pruning=True, ignored_layers=head).step()


def tp_ratio(ctx: Context, net: nn.Module, target: float) -> tuple[float, float]:
    """The pruning ratio, bisected on copies of the trained ``net``, whose FLOPs kept are the
    largest not above ``target``; and those FLOPs. (Ratios up to 0.8 only: near 0.9 Torch-Pruning
    starts to refuse layers and the FLOPs kept grow again.)"""
    def kept(r: float) -> float:
        trial = copy.deepcopy(net)
        tp_prune(trial, ctx.example, r)
        return ctx.costs(trial)[0]

    lo, hi = 0.0, 0.8
    best = kept(hi)
    if best > target:  # a narrow net: look a little further before settling for the fewest FLOPs reachable
        tried = {hi: best}
        for r in (0.85, 0.9, 0.93):
            tried[r] = kept(r)
            if tried[r] <= target:
                break
        hi = min(tried, key=lambda r: (tried[r] > target, -tried[r] if tried[r] <= target else tried[r]))
        best = tried[hi]
        if best > target:
            print(f"torch_pruning: no ratio up to 0.93 keeps <= {target} of the FLOPs; the fewest reachable, "
                  f"{best:.3f} at ratio {hi}, is recorded (more FLOPs than the others: an advantage to it)",
                  flush=True)
            return hi, best
        lo = max(r for r in tried if tried[r] > target) if any(tried[r] > target for r in tried) else 0.0
    for _ in range(14):
        mid = (lo + hi) / 2
        k = kept(mid)
        if k <= target:
            hi, best = mid, k
            if k >= target - 0.002:
                break
        else:
            lo = mid
    return hi, best


def selection(cells: list[np.ndarray], quota: list[int], n: int, pick: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    sel = np.zeros(n, dtype=bool)
    for members, k in zip(cells, quota):
        if k:
            sel[pick(members, k)] = True
    return sel


# ---------------------------------------------------------------------------------- methods
# Each returns (the network to evaluate, forced groups or None).
def run_dense(ctx: Context, target: float, epochs: int, seed: int,
              make: Callable[[], nn.Module] | None = None) -> tuple[nn.Module, int | None]:
    torch.manual_seed(seed)
    net = (make or make_net)()
    Trainer(ctx.d, ctx.cfg, epochs, seed).run(net, sgd(net, ctx.cfg), epochs)
    return net, None


def run_otonas(ctx: Context, target: float, epochs: int, seed: int) -> tuple[nn.Module, int | None]:
    torch.manual_seed(seed)
    net = make_net()
    tr = Trainer(ctx.d, ctx.cfg, epochs, seed)
    space = otonas.analyze(net, (ctx.example,))
    o = ctx.cfg["otonas"]
    opt = DHSPG(space, lr=ctx.cfg["lr_max"], momentum=ctx.cfg["momentum"], weight_decay=ctx.cfg["weight_decay"],
                target_flops=target, warmup_steps=round(o["warmup"] * tr.total),
                end_step=round(o["projection_end"] * tr.total), schedule=o["schedule"], periods=o["periods"],
                score=make_score(o["score"]))
    tr.run(net, opt, epochs)
    forced = int(opt.metrics()["num_forced_groups"])
    return otonas.build(space), forced


def run_random_train(ctx: Context, target: float, epochs: int, seed: int) -> tuple[nn.Module, int | None]:
    torch.manual_seed(seed)
    net = make_net()
    space = otonas.analyze(net, (ctx.example,))
    cells, quota = ctx.quotas(target)
    rng = np.random.default_rng(seed)
    mask = Mask(space, selection(cells, quota, space.num_prunable_groups,
                                 lambda m, k: rng.choice(m, size=k, replace=False)))
    mask()
    opt = sgd(net, ctx.cfg)
    mask.opt = opt
    Trainer(ctx.d, ctx.cfg, epochs, seed).run(net, opt, epochs, after_step=mask)
    return otonas.build(space), None


def _pre(epochs: int) -> int:
    return max(1, round(epochs * 2 / 3)) if epochs > 1 else 1


def run_prune_finetune(ctx: Context, target: float, epochs: int, seed: int) -> tuple[nn.Module, int | None]:
    torch.manual_seed(seed)
    net = make_net()
    space = otonas.analyze(net, (ctx.example,))
    tr = Trainer(ctx.d, ctx.cfg, epochs, seed)
    pre = _pre(epochs)
    tr.run(net, sgd(net, ctx.cfg), pre)
    cells, quota = ctx.quotas(target)
    norms = group_norms(space)
    mask = Mask(space, selection(cells, quota, space.num_prunable_groups,
                                 lambda m, k: m[np.argsort(norms[m], kind="stable")[:k]]))
    mask()
    opt = sgd(net, ctx.cfg)
    mask.opt = opt
    tr.run(net, opt, epochs - pre, after_step=mask)
    return otonas.build(space), None


def run_torch_pruning(ctx: Context, target: float, epochs: int, seed: int) -> tuple[nn.Module, int | None]:
    torch.manual_seed(seed)
    net = make_net()
    tr = Trainer(ctx.d, ctx.cfg, epochs, seed)
    pre = _pre(epochs)
    tr.run(net, sgd(net, ctx.cfg), pre)
    net.eval()
    ratio, _ = tp_ratio(ctx, net, target)
    tp_prune(net, ctx.example, ratio)
    tr.run(net, sgd(net, ctx.cfg), epochs - pre)
    return net, None


def make_supernet() -> nn.Module:
    return search_spaces.create("darts", size="tiny", in_chans=1, num_classes=10)


def supernet_h2spg(ctx: Context, budget: float, epochs: int, seed: int, **options: Any) -> tuple[nn.Module, Any, Any]:
    """The supernet trained by H2SPG with otonas search's erase-mode settings (``budget`` of the
    erasing groups, no channel pruning; ``options`` override the schedule, score or λ): the
    network, its space and the optimizer."""
    from otonas.optim import H2SPG

    torch.manual_seed(seed)
    net = make_supernet()
    tr = Trainer(ctx.d, ctx.cfg, epochs, seed)
    space = otonas.analyze(net, (ctx.example,))
    o, sc = ctx.cfg["otonas"], ctx.cfg["darts"]
    kw = dict(schedule=o["schedule"], periods=o["periods"], score=make_score(o["erase_score"]), lmbda=2.0)
    opt = H2SPG(space, lr=ctx.cfg["lr_max"], momentum=ctx.cfg["momentum"], weight_decay=ctx.cfg["weight_decay"],
                target_group_sparsity=0.0, erase_budget=budget, warmup_steps=round(sc["warmup"] * tr.total),
                end_step=round(sc["projection_end"] * tr.total), **{**kw, **options})
    tr.run(net, opt, epochs)
    return net, space, opt


def run_supernet_otonas(ctx: Context, budget: float, epochs: int, seed: int) -> tuple[nn.Module, int | None]:
    """H2SPG with otonas search's erase-mode settings: ``budget`` of the erasing groups, no channel pruning."""
    _, space, opt = supernet_h2spg(ctx, budget, epochs, seed)
    return otonas.build(space), int(opt.metrics()["num_forced_groups"])


class EraseMask:
    """Holds every parameter of a set of erasing groups at exactly zero (and its momentum)."""

    def __init__(self, space: Any, chosen: np.ndarray) -> None:
        params = dict(space.model.named_parameters(remove_duplicate=False))
        self.params = [params[f] for i in np.nonzero(chosen)[0] for f in space.erasing_groups[i].params]
        self.opt: torch.optim.Optimizer | None = None

    @torch.no_grad()
    def __call__(self) -> None:
        for p in self.params:
            p.zero_()
            buf = self.opt.state.get(p, {}).get("momentum_buffer") if self.opt is not None else None
            if buf is not None:
                buf.zero_()


def run_random_erase(ctx: Context, budget: float, epochs: int, seed: int) -> tuple[nn.Module, int | None]:
    """At initialisation, a random valid erasure at the FLOPs of otonas' run of the same seed: the
    erasing groups in a random order, each kept when the set stays valid (``space.is_valid``, not
    inside an erased one) and the FLOPs kept stay at or above otonas' (an advantage to the
    baseline); held at zero for all epochs, then built. (A random valid erasure of as many
    operators as otonas erases keeps far fewer FLOPs — whole cells go — so the count is not matched.)"""
    from otonas.testing import random_valid_erasure

    key_ = (SUPERNET, "otonas", seed)
    if key_ not in ctx.flops_of:
        raise SystemExit("random_erase needs the otonas run of the same seed first (its FLOPs kept)")
    floor = ctx.flops_of[key_] * ctx.dense_flops
    torch.manual_seed(seed)
    net = make_supernet()
    space = otonas.analyze(net, (ctx.example,))
    chosen = random_valid_erasure(space, 1.0, np.random.default_rng(seed),
                                  accept=lambda c: space.costs(erased=c).flops >= floor)
    mask = EraseMask(space, chosen)
    mask()
    opt = sgd(net, ctx.cfg)
    mask.opt = opt
    Trainer(ctx.d, ctx.cfg, epochs, seed).run(net, opt, epochs, after_step=mask)
    return otonas.build(space), None


ERASE_RUNNERS: dict[str, Callable[[Context, float, int, int], tuple[nn.Module, int | None]]] = {
    "dense": lambda ctx, b, e, s: run_dense(ctx, b, e, s, make=make_supernet), "otonas": run_supernet_otonas, "random_erase": run_random_erase}


RUNNERS: dict[str, Callable[[Context, float, int, int], tuple[nn.Module, int | None]]] = {
    "dense": run_dense, "otonas": run_otonas, "random_train": run_random_train,
    "prune_finetune": run_prune_finetune, "torch_pruning": run_torch_pruning}


def accuracy(net: nn.Module, d: Data) -> float:
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(d.x_test[i:i + 500]).argmax(1) for i in range(0, len(d.y_test), 500)])
    return float((pred == d.y_test).float().mean()) * 100


# ---------------------------------------------------------------------------------- results
def _target(r: dict[str, Any]) -> float:
    """The budget of a run: its FLOPs target, or (supernet erase runs) its erase budget."""
    return float(r["flops_target"] if r.get("flops_target") is not None else r["erase_budget"])


def key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["data"], r["model"], r["method"], _target(r), int(r["seed"]), int(r["epochs"]))


def _depends(r: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """The part of ``cfg`` a run's result depends on: the shared training settings, its data set's,
    otonas' settings for otonas runs, the supernet's for supernet runs."""
    part = {k: cfg.get(k) for k in ("model", "batch", "lr_max", "lr_warmup", "momentum", "weight_decay", "flops")}
    part[r["data"]] = cfg.get(r["data"])
    if r["method"] == "otonas":
        part["otonas"] = cfg.get("otonas")
    if r["model"] == SUPERNET:
        part["darts"] = cfg.get("darts")
    elif r["method"] in ("prune_finetune", "torch_pruning"):
        part["prune_at"] = cfg.get("prune_at")
    return part


def load_results(path: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """The runs in ``path`` whose settings are this config's; runs made under other settings (e.g.
    otonas' schedule changed: only its own runs) are dropped, with a line saying how many."""
    if not path.exists():
        return {"config": cfg, "runs": []}
    res = json.loads(path.read_text())
    old = res.get("config") or {}
    keep = [r for r in res["runs"] if _depends(r, old) == _depends(r, cfg)]
    if len(keep) < len(res["runs"]):
        print(f"{path}: {len(res['runs']) - len(keep)} of {len(res['runs'])} runs were made under other settings "
              "and will be run again", flush=True)
    return {"config": cfg, "runs": keep}


def save(path: Path, res: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    os.replace(tmp, path)


def _ms(xs: list[float], fmt: str = ".2f") -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):{fmt}} ± {sd:{fmt.lstrip('+')}}"


def summary(runs: list[dict[str, Any]]) -> str:
    """Markdown: per (data, target, method) mean ± std; paired differences otonas − baseline; then
    the supernet's erase runs."""
    erase = [r for r in runs if r["model"] == SUPERNET]
    runs = [r for r in runs if r["model"] != SUPERNET]
    lines = ["| data | FLOPs target | method | FLOPs kept (%) | params kept (%) | test accuracy (%) | seeds | epochs | s per run |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    cells: dict[tuple[str, float, str], list[dict[str, Any]]] = {}
    for r in runs:
        cells.setdefault((r["data"], float(r["flops_target"]), r["method"]), []).append(r)
    order = {m: i for i, m in enumerate(METHODS)}
    datas = sorted({k[0] for k in cells}, key=lambda s: DATASETS.index(s) if s in DATASETS else 99)
    for data in datas:
        for t in sorted({k[1] for k in cells if k[0] == data}, reverse=True):
            for m in sorted({k[2] for k in cells if k[:2] == (data, t)}, key=lambda m: order.get(m, 99)):
                rs = cells[(data, t, m)]
                forced = sum(r["forced_groups"] or 0 for r in rs)
                lines.append(f"| {data} | {t:g} | {m}{f' (forced {forced})' if forced else ''} | "
                             f"{_ms([100 * r['flops_kept'] for r in rs], '.1f')} | "
                             f"{_ms([100 * r['params_kept'] for r in rs], '.1f')} | {_ms([r['accuracy'] for r in rs])} | "
                             f"{len(rs)} | {rs[0]['epochs']} | {statistics.mean(r['seconds'] for r in rs):.1f} |")
    lines += ["", "Paired differences, otonas − baseline, test accuracy in points (mean ± std over the seeds both have; "
              "dense: the dense run of the same seed):", "",
              "| data | FLOPs target | − dense | − random_train | − prune_finetune | − torch_pruning |",
              "|---|---:|---:|---:|---:|---:|"]
    for data in datas:
        for t in sorted({k[1] for k in cells if k[0] == data and k[2] == "otonas"}, reverse=True):
            ours = {r["seed"]: r["accuracy"] for r in cells[(data, t, "otonas")]}
            row = [data, f"{t:g}"]
            for b in BASELINES:
                other = {r["seed"]: r["accuracy"] for r in cells.get((data, 1.0 if b == "dense" else t, b), [])}
                both = sorted(set(ours) & set(other))
                row.append(f"{_ms([ours[s] - other[s] for s in both], '+.2f')} (n={len(both)})" if both else "—")
            lines.append("| " + " | ".join(row) + " |")
    if erase:
        lines += ["", f"Supernet ({SUPERNET}, erase mode: H2SPG against a random valid erasure at "
                  "initialisation keeping at least the FLOPs of otonas' run of the same seed, then trained; digits):", "",
                  "| method | erase budget | FLOPs kept (%) | params kept (%) | test accuracy (%) | seeds | epochs | "
                  "s per run |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        by: dict[str, list[dict[str, Any]]] = {}
        for r in erase:
            by.setdefault(r["method"], []).append(r)
        for m in [m for m in ERASE_METHODS if m in by]:
            rs = by[m]
            forced = sum(r["forced_groups"] or 0 for r in rs)
            lines.append(f"| {m}{f' (forced {forced})' if forced else ''} | {rs[0]['erase_budget']:g} | "
                         f"{_ms([100 * r['flops_kept'] for r in rs], '.1f')} | "
                         f"{_ms([100 * r['params_kept'] for r in rs], '.1f')} | {_ms([r['accuracy'] for r in rs])} | "
                         f"{len(rs)} | {rs[0]['epochs']} | {statistics.mean(r['seconds'] for r in rs):.1f} |")
        ours = {r["seed"]: r["accuracy"] for r in by.get("otonas", [])}
        for b in ("random_erase", "dense"):
            other = {r["seed"]: r["accuracy"] for r in by.get(b, [])}
            both = sorted(set(ours) & set(other))
            if both:
                lines.append(f"\nPaired difference otonas − {b}: {_ms([ours[s] - other[s] for s in both], '+.2f')} "
                             f"points (n={len(both)}).")
    return "\n".join(lines)


def figure(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in runs if r["model"] != SUPERNET]
    datas = [d for d in DATASETS if any(r["data"] == d for r in runs)]
    if not datas:
        return
    fig, axes = plt.subplots(1, len(datas), figsize=(5.5 * len(datas), 4.2), squeeze=False)
    marks = dict(zip(METHODS, "o*sD^"))
    for ax, data in zip(axes[0], datas):
        for m in METHODS:
            pts: dict[float, list[dict[str, Any]]] = {}
            for r in runs:
                if r["data"] == data and r["method"] == m:
                    pts.setdefault(float(r["flops_target"]), []).append(r)
            if not pts:
                continue
            ts = sorted(pts)
            x = [100 * statistics.mean(r["flops_kept"] for r in pts[t]) for t in ts]
            y = [statistics.mean(r["accuracy"] for r in pts[t]) for t in ts]
            e = [statistics.stdev([r["accuracy"] for r in pts[t]]) if len(pts[t]) > 1 else 0.0 for t in ts]
            if m == "dense":
                ax.axhline(y[0], color="gray", ls="--", lw=1, label=f"dense ({y[0]:.1f} %)")
                continue
            ax.errorbar(x, y, yerr=e, marker=marks[m], capsize=3, label=m, ms=8 if m == "otonas" else 6)
        ep = sorted({r["epochs"] for r in runs if r["data"] == data})
        ax.set_title(f"{data}, tiny ResNet-20, {'/'.join(map(str, ep))} epochs")
        ax.set_xlabel("FLOPs kept (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_readme(table: str, command: str) -> None:
    text = README.read_text()
    block = f"{BEGIN}\n`{command}`\n\n{table}\n{END}"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        raise SystemExit(f"bench/README.md has no {BEGIN} … {END} block in its Quality section")
    README.write_text(text)


# ---------------------------------------------------------------------------------- main
@dataclass(frozen=True)
class Unit:
    """One data set's and one seed's runs of one model, in order (random_erase reads otonas' FLOPs)."""

    data: str
    model: str
    seed: int
    epochs: int
    runs: tuple[tuple[str, float], ...]  # (method, FLOPs target or erase budget)

    def has(self, r: dict[str, Any]) -> bool:
        return (r["data"], r["model"], int(r["seed"]), int(r["epochs"])) == (self.data, self.model, self.seed,
                                                                            self.epochs) and \
            (r["method"], _target(r)) in self.runs


_CONTEXTS: dict[tuple[str, str, int], Context] = {}


def run_unit(u: Unit, cfg: dict[str, Any], threads: int, have: list[dict[str, Any]],
             emit: Callable[[dict[str, Any]], None]) -> None:
    """Run the unit's runs not in ``have``, in order, handing each result to ``emit``."""
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch_pruning")
    if u.model != SUPERNET:
        _NET[0] = u.model
    ck = (u.data, u.model, id(cfg))
    if ck not in _CONTEXTS:
        _CONTEXTS[ck] = Context(u.data, cfg, make=make_supernet if u.model == SUPERNET else None)
    ctx = _CONTEXTS[ck]
    runners = ERASE_RUNNERS if u.model == SUPERNET else RUNNERS
    done = {(r["method"], _target(r)): r for r in have}
    for m, t in u.runs:
        if (m, t) in done:
            ctx.flops_of[(u.model, m, u.seed)] = done[(m, t)]["flops_kept"]
            continue
        t0 = time.perf_counter()
        net, forced = runners[m](ctx, t, u.epochs, u.seed)
        secs = time.perf_counter() - t0
        acc = accuracy(net, ctx.d)
        fk, pk = ctx.costs(net)
        budget = ({"flops_target": None, "erase_budget": t} if u.model == SUPERNET else {"flops_target": t})
        ctx.flops_of[(u.model, m, u.seed)] = fk
        emit({"data": u.data, "model": u.model, "method": m, **budget, "flops_kept": fk, "params_kept": pk,
              "accuracy": acc, "seed": u.seed, "epochs": u.epochs, "forced_groups": forced,
              "seconds": round(secs, 2)})


def run_unit_collect(u: Unit, cfg: dict[str, Any], threads: int, have: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``run_unit`` in a worker process: the results as a list."""
    out: list[dict[str, Any]] = []
    run_unit(u, cfg, threads, have, out.append)
    return out


def line(r: dict[str, Any]) -> str:
    forced = r["forced_groups"]
    return (f"{r['data']:12s} {r['model']:14s} {r['method']:14s} target {_target(r):4.2f} seed {r['seed']}  "
            f"FLOPs kept {r['flops_kept']:6.1%}  params kept {r['params_kept']:6.1%}  acc {r['accuracy']:6.2f}%  "
            f"forced {forced if forced is not None else '-'}  {r['seconds']:6.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=",".join(DATASETS))
    ap.add_argument("--targets", default="0.5,0.25", help="fractions of the FLOPs to keep")
    ap.add_argument("--seeds", default=None, help="comma-separated, for every data set (default: "
                    + ", ".join(f"0..{n - 1} {d}" for d, n in DEFAULT_SEEDS.items()) + "; the supernet runs on digits)")
    ap.add_argument("--epochs", type=int, default=None, help="for every data set (default: 6 fashionmnist, 30 digits)")
    ap.add_argument("--methods", default=",".join(METHODS), help="for the ResNet-20 runs (the supernet runs "
                    f"are always {', '.join(ERASE_METHODS)})")
    ap.add_argument("--models", default=f"{MODEL},{SUPERNET}",
                    help=f"{MODEL}: channel pruning at --targets (also {', '.join(CHANNEL_MODELS[1:])}: other "
                         f"architectures, each into its own --out); {SUPERNET}: the DARTS supernet in erase mode "
                         "on digits")
    ap.add_argument("--out", default=None, help=f"results JSON (default {DEFAULT_OUT.relative_to(ROOT)}; "
                                                "with --quick /tmp/quality_quick.json)")
    ap.add_argument("--quick", action="store_true", help="smoke test: one seed, 1 epoch, a small Fashion-MNIST subset")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs in parallel, one process each with --threads "
                    "threads (a data set's and seed's runs stay in order in one process; default: 2 where there are "
                    "two cores)")
    ap.add_argument("--otonas-score", default=None, help="otonas' channel score instead of "
                    f"{FULL['otonas']['score']} (one of {', '.join(SCORES)}): an ablation, into its own --out")
    ap.add_argument("--summary-only", action="store_true", help="print / write the summary of --out, run nothing")
    ap.add_argument("--no-report", action="store_true", help="do not write bench/README.md and the figure")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch_pruning")
    cfg = QUICK if args.quick else FULL
    if args.otonas_score is not None:
        make_score(args.otonas_score)  # an unknown name fails here, naming the choices
        cfg = {**cfg, "otonas": {**cfg["otonas"], "score": args.otonas_score}}
    out = Path(args.out) if args.out else (Path("/tmp/quality_quick.json") if args.quick else DEFAULT_OUT)

    def seeds_of(data: str) -> list[int]:
        if args.seeds is not None:
            return [int(s) for s in args.seeds.split(",")]
        return [0] if args.quick else list(range(DEFAULT_SEEDS[data]))
    methods = args.methods.split(",")
    for m in methods:
        if m not in RUNNERS:
            raise SystemExit(f"unknown method {m!r}; expected some of {', '.join(METHODS)}")
    targets = [float(t) for t in args.targets.split(",")]
    res = load_results(out, cfg)
    if not args.summary_only:
        models = args.models.split(",")
        units: list[Unit] = []
        for net in models:
            if net == SUPERNET:
                continue
            if net not in CHANNEL_MODELS:
                raise SystemExit(f"unknown model {net!r}; expected some of {', '.join(CHANNEL_MODELS + (SUPERNET,))}")
            for data in args.data.split(","):
                epochs = args.epochs if args.epochs is not None else cfg[data]["epochs"]
                runs = [(m, t) for m in methods for t in ([1.0] if m == "dense" else targets)]
                units += [Unit(data, net, seed, epochs, tuple(runs)) for seed in seeds_of(data)]
        if SUPERNET in models:
            sc = cfg["darts"]
            epochs = args.epochs if args.epochs is not None else sc["epochs"]
            runs = [(m, 0.0 if m == "dense" else sc["erase_budget"]) for m in ERASE_METHODS]
            units += [Unit(sc["data"], SUPERNET, seed, epochs, tuple(runs)) for seed in seeds_of(sc["data"])]

        def record(r: dict[str, Any]) -> None:
            res["runs"].append(r)
            save(out, res)
            print(line(r), flush=True)

        todo = [(u, [r for r in res["runs"] if u.has(r)]) for u in units]
        todo = [(u, have) for u, have in todo if len(have) < len(u.runs)]
        if args.jobs <= 1:
            for u, have in todo:
                run_unit(u, cfg, args.threads, have, record)
        else:  # one unit (a data set's and seed's runs, in order) per worker process, args.threads each
            import concurrent.futures as cf
            import multiprocessing as mp

            with cf.ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
                futures = [pool.submit(run_unit_collect, u, cfg, args.threads, have) for u, have in todo]
                for f in cf.as_completed(futures):
                    for r in f.result():
                        record(r)
    table = summary(res["runs"])
    print(table)
    if not args.quick and not args.no_report and out.resolve() == DEFAULT_OUT.resolve():
        figure(res["runs"], FIGURE)
        write_readme(table, "python bench/bench_quality.py")
        print(f"wrote {FIGURE.relative_to(ROOT)} and the Quality section of bench/README.md")
    elif args.quick:
        figure(res["runs"], out.with_suffix(".png"))


if __name__ == "__main__":
    main()
