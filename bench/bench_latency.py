"""Real speed-up on CPU: latency of built subnets against the full model, beside the FLOPs ratio.

    python bench/bench_latency.py [--models resnet50,mobilenet_v2] [--flops 0.5,0.25]
                                  [--round-to 1,8,16] [--batches 1,32] [--repeat 5] [--threads 1]
                                  [--memory-format contiguous,channels_last]
    python bench/bench_latency.py --levels 0.3,0.5,0.7 ...   # the older mode: random group shares
    python bench/bench_latency.py --target-latency 0.5,0.25 --models resnet50 --batches 1,32 --threads 1

Default mode: for each FLOPs target and ``round_to`` the per-family quotas are DHSPG's
(``DHSPG(space, target_flops=t, round_to=r)``: one common share bisected on ``space.costs``,
kept channels in multiples of ``round_to``), the first groups of each family up to its quota
are zeroed (within a family any choice costs alike), and the subnet is built.

With ``--target-latency`` the quotas are DHSPG's at a latency budget (``DHSPG(space,
target_latency=t, latency_model=otonas.latency.LatencyModel(space, batch=b, num_threads=n))``:
the same bisection over the latency estimated from the cached per-layer table); each row gives
the estimated fraction of the dense latency beside the measured one (full and subnets timed in
turn, medians), and the seconds the table took to measure (0 when the cache had it).

With ``--levels`` a random set of that share of the prunable groups is zeroed
(``otonas.testing.zero_groups_``), ``space.removable`` says what the builder takes out and
``otonas.build`` builds the subnet. Latency is the median of ``--repeat`` forward passes under
``torch.inference_mode`` after one warm-up pass; the full model and its subnets are timed in
turn inside each repetition so that machine noise hits them alike. ``--memory-format
channels_last`` times copies of every net (full and subnets alike) with their 4-d weights and the
input in channels-last layout (``net.to(memory_format=torch.channels_last)``). ``--fold-bn``
folds the BatchNorms into the convolutions (``otonas.build.fold_batchnorm``) in the full network
(then ``otonas.build`` of the dense space) and in every subnet alike.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import otonas  # noqa: E402
from otonas.models import resolve_model  # noqa: E402
from otonas.testing import zero_groups_  # noqa: E402


def zero_quotas_(space: otonas.SearchSpace, opt: Any) -> np.ndarray:
    """Zero the first groups of each of DHSPG's cells up to its quota (within a family any choice
    costs alike) and return that mask."""
    assert opt.selector.cells is not None
    mask = np.zeros(space.num_prunable_groups, dtype=bool)
    for members, k in zip(opt.selector.cells, opt.selector.quotas):
        mask[np.asarray(members)[:k]] = True
    zero_groups_(space, mask)
    return mask


def _setup(name: str, seed: int) -> tuple[torch.nn.Module, tuple[int, ...], otonas.SearchSpace, dict[str, torch.Tensor],
                                         otonas.analysis.Costs, list[tuple[str, torch.nn.Module, float]]]:
    """The torchvision model (eval), its input shape, its search space, its weights, its dense
    costs, and the list of nets to time starting with a copy of the full model."""
    torch.manual_seed(seed)
    resolved = resolve_model(f"torchvision:{name}")
    model, shape = resolved.model.eval(), resolved.input_shapes[0]
    full = copy.deepcopy(model)
    space = otonas.analyze(model, (torch.randn(2, *shape[1:]),))
    return model, shape, space, copy.deepcopy(model.state_dict()), space.costs(), [("full", full, 1.0)]


def subnets(name: str, levels: list[float], seed: int = 0) -> tuple[list[tuple[str, torch.nn.Module, float]], tuple[int, ...]]:
    """The full model and one built subnet per level: (label, module, FLOPs kept)."""
    model, shape, space, state, base, out = _setup(name, seed)
    rng = np.random.default_rng(seed)
    for level in levels:
        model.load_state_dict(state)
        n = space.num_prunable_groups
        mask = np.zeros(n, dtype=bool)
        mask[rng.choice(n, size=round(level * n), replace=False)] = True
        zero_groups_(space, mask)
        removed = space.removable(mask)
        out.append((f"{level:.0%} groups", otonas.build(space).eval(), space.costs(removed=removed).flops / base.flops))
    model.load_state_dict(state)
    return out, shape


def flops_subnets(name: str, targets: list[float], round_tos: list[int], seed: int = 0,
                  fold_bn: bool = False) -> tuple[list[tuple[str, torch.nn.Module, float]], tuple[int, ...]]:
    """The full model and one subnet per (FLOPs target, round_to), with DHSPG's aligned quotas.
    With ``fold_bn`` the full model is ``otonas.build`` of the dense space, and it and every
    subnet have their BatchNorms folded into the convolutions (``otonas.build.fold_batchnorm``)."""
    import warnings

    from otonas.build import fold_batchnorm
    from otonas.optim import DHSPG

    model, shape, space, state, base, out = _setup(name, seed)
    if fold_bn:
        dense = otonas.build(space).eval()
        fold_batchnorm(dense)
        out = [("full, BN folded", dense, 1.0)]
    for t in targets:
        for r in round_tos:
            model.load_state_dict(state)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                opt = DHSPG(space, lr=0.1, target_flops=t, round_to=r, warmup_steps=1, end_step=2)
            mask = zero_quotas_(space, opt)
            removed = space.removable(mask)
            sub = otonas.build(space).eval()
            if fold_bn:
                fold_batchnorm(sub)
            out.append((f"FLOPs {t:g}, round_to {r}" + (", BN folded" if fold_bn else ""), sub,
                        space.costs(removed=removed).flops / base.flops))
    model.load_state_dict(state)
    return out, shape


def latency_rows(name: str, targets: list[float], round_tos: list[int], batches: list[int], repeat: int,
                 threads: int, cache_dir: str | None) -> None:
    """The ``--target-latency`` mode: per batch a latency model, per target and round_to a subnet;
    estimated against measured fractions of the dense latency."""
    import warnings

    from otonas.latency import LatencyModel, measure_latency
    from otonas.optim import DHSPG

    model, shape, space, state, base, _ = _setup(name, 0)
    full = copy.deepcopy(model).eval()
    for batch in batches:
        t0 = time.perf_counter()
        lm = LatencyModel(space, batch=batch, num_threads=threads, cache_dir=cache_dir)
        took = time.perf_counter() - t0
        rows = []
        for t in targets:
            for r in round_tos:
                model.load_state_dict(state)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    opt = DHSPG(space, lr=0.1, target_latency=t, latency_model=lm, round_to=r, warmup_steps=1,
                                end_step=2)
                mask = zero_quotas_(space, opt)
                removed = space.removable(mask)
                rows.append((t, r, lm.fraction(removed), space.costs(removed=removed).flops / base.flops,
                             otonas.build(space).eval()))
        model.load_state_dict(state)
        x = torch.randn(batch, *shape[1:])
        lat = measure_latency([full, *(row[4] for row in rows)], [x], repeats=repeat, warmup=1, num_threads=threads)
        for (t, r, est, fl, _), sec in zip(rows, lat[1:]):
            meas = sec / lat[0]
            print(f"| {name} | {batch} | {t:g} | {r} | {est:.3f} | {meas:.3f} | {meas / est:.2f} | {fl:.1%} | "
                  f"{lat[0] * 1e3:.1f} → {sec * 1e3:.1f} | {lm.dense_seconds * 1e3:.1f} | {took:.1f} s "
                  f"({lm.table.measured} shapes) |", flush=True)


def measure(nets: list[tuple[str, torch.nn.Module, float]], shape: tuple[int, ...], batch: int, repeat: int,
            memory_format: str = "contiguous") -> list[float]:
    """Median seconds of each net, timed in turn; in ``memory_format`` (the nets' copies and the
    input converted alike)."""
    from otonas.latency import MEMORY_FORMATS, to_memory_format

    x = to_memory_format(torch.randn(batch, *shape[1:]), memory_format)
    if memory_format != "contiguous":
        nets = [(label, copy.deepcopy(net).to(memory_format=MEMORY_FORMATS[memory_format]), kept)
                for label, net, kept in nets]
    times: list[list[float]] = [[] for _ in nets]
    with torch.inference_mode():
        for _, net, _ in nets:
            net(x)  # warm-up
        for _ in range(repeat):
            for i, (_, net, _) in enumerate(nets):
                t = time.perf_counter()
                net(x)
                times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet50,mobilenet_v2")
    ap.add_argument("--levels", default=None, help="older mode: random shares of the groups zeroed")
    ap.add_argument("--flops", default="0.5,0.25", help="FLOPs fractions to keep (default mode)")
    ap.add_argument("--round-to", default="1,8,16", help="round_to values of the default mode")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads; 1 is steadiest on a shared machine")
    ap.add_argument("--target-latency", default=None, help="latency mode: fractions of the dense latency to keep")
    ap.add_argument("--cache-dir", default=None, help="latency mode: the table's cache (default: the user cache)")
    ap.add_argument("--fold-bn", action="store_true",
                    help="default mode: fold BatchNorms into convolutions in the full network (built) and the subnets")
    ap.add_argument("--memory-format", default="contiguous",
                    help="comma-separated layouts the nets are timed in: contiguous (NCHW), channels_last (NHWC); "
                         "with both, each batch is timed in each, full and subnets alike")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.target_latency:
        round_tos = [int(v) for v in args.round_to.split(",")] if args.round_to != "1,8,16" else [1]
        print("| model | batch | target | round_to | estimated | measured | measured / estimated | FLOPs kept | "
              "latency full → subnet (ms) | dense in the table (ms) | table |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name in args.models.split(","):
            latency_rows(name, [float(v) for v in args.target_latency.split(",")], round_tos,
                         [int(b) for b in args.batches.split(",")], args.repeat, args.threads, args.cache_dir)
        return
    formats = args.memory_format.split(",")
    print("| model | subnet | FLOPs kept | params kept | batch | memory format | latency (ms) | speed-up | "
          "FLOPs ratio (full/subnet) | FLOPs ratio / speed-up |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for name in args.models.split(","):
        if args.levels:
            nets, shape = subnets(name, [float(v) for v in args.levels.split(",")])
        else:
            nets, shape = flops_subnets(name, [float(v) for v in args.flops.split(",")],
                                        [int(v) for v in args.round_to.split(",")], fold_bn=args.fold_bn)
        p_full = sum(p.numel() for p in nets[0][1].parameters())
        for batch in (int(b) for b in args.batches.split(",")):
            for fmt in formats:
                lat = measure(nets, shape, batch, args.repeat, fmt)
                for (label, net, kept), t in zip(nets, lat):
                    p = sum(q.numel() for q in net.parameters()) / p_full
                    print(f"| {name} | {label} | {kept:.1%} | {p:.1%} | {batch} | {fmt} | {t * 1e3:.1f} | "
                          f"{lat[0] / t:.2f}× | {1 / kept:.2f}× | {(1 / kept) / (lat[0] / t):.2f} |", flush=True)


if __name__ == "__main__":
    main()
