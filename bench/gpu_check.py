"""The CUDA path of otonas in one run: optimizers, build, and an H2SPG epoch against SGD's.

    python bench/gpu_check.py                 # on a machine with a CUDA GPU (< 8 minutes on one)
    python bench/gpu_check.py --cpu-smoke     # the same checks, small, on the CPU (GPU-only parts skipped)
    python bench/gpu_check.py --require-cuda  # fail at once when no GPU is there

1. Optimizers on CUDA tensors (a model analysed and trained on the GPU, random data):
   DHSPG with the progressive schedule (by group count, and by a FLOPs budget), DHSPG with
   ``schedule="half_space"`` and H2SPG with the progressive schedule on the DARTS supernet.
   Checks: after the projection window exactly the target number of groups is zero (the
   analysis's own exact-zero test, ``SearchSpace.zero_groups``; H2SPG: every accepted erasing
   group all zero), they stay zero over further steps, nothing was forced with the progressive
   schedule, and (GPU only) no mid-period step reads anything back from the device: each step is
   run under ``torch.cuda.set_sync_debug_mode("warn")`` and the synchronising calls it makes are
   counted per kind of step; any in a mid-period step fails the check (period starts and the
   first step after the window read back by design, see docs/optim.md).
2. Build and verify on CUDA: ``otonas.analyze`` on a CUDA model, 30% of its prunable groups set
   to zero, ``otonas.build``, and the subnet's outputs compared with the zeroed model's on a
   batch of another size (TF32 off; relative tolerance 1e-4); the same with a random valid
   erasure on the DARTS supernet.
3. Timing: epochs of the default ``otonas search`` job's model (DARTS, ``size="tiny"``, 1×8×8
   inputs, batch 64, 23 steps an epoch) and of the default-size DARTS supernet (3×32×32),
   trained with H2SPG (1 warm-up epoch, 2 of projection in 5 periods, then after) and with
   ``torch.optim.SGD(foreach=True)`` (same lr, momentum 0.9, weight decay 1e-4), alternated
   epoch by epoch, each on its own copy of the model; forward, backward and step, synchronised
   at the end of each epoch. Prints the ratio per phase and over the whole run.

4. Latency of built subnets (issue "speed-ups that track the FLOPs"): torchvision ResNet-50 with
   DHSPG's per-family quotas at 50% and 25% of the FLOPs (``round_to`` 1 and 16, the first groups of
   each family zeroed, built on the CPU), moved to the GPU in float16 and bfloat16 with
   ``channels_last``; full model and subnets timed in turn (``otonas.latency.measure_latency``,
   medians) at batch 32 and 1. Prints speed-up beside the FLOPs ratio; a check fails only if a
   subnet's output differs from the zeroed model's in that precision by more than a loose bound
   (the timing itself has no pass mark). On the CPU (smoke) ResNet-18 at 64×64, float32, batch 8.

Prints a summary (PASS / FAIL / SKIP per check) and exits 1 when a check failed. Without a GPU
(or with ``--cpu-smoke``) everything runs on the CPU at a small size, the GPU-only checks are
reported as SKIP, and the exit status is 0 unless a check failed.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import otonas  # noqa: E402
from otonas.optim import DHSPG, H2SPG, BudgetWarning, ForcedProjectionWarning  # noqa: E402
from otonas.optim import period_bounds  # noqa: E402

RESULTS: list[tuple[str, str, str]] = []  # (check, PASS / FAIL / SKIP, detail)


def record(name: str, ok: bool | None, detail: str) -> None:
    status = "SKIP" if ok is None else "PASS" if ok else "FAIL"
    RESULTS.append((name, status, detail))
    print(f"[{status}] {name}: {detail}", flush=True)


def guarded(name: str, fn: Callable[[], None]) -> None:
    """Run one check; an exception is its failure (with the traceback printed)."""
    t0 = time.time()
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - every failure is reported, the run goes on
        traceback.print_exc()
        record(name, False, f"raised {type(e).__name__}: {e}")
    print(f"  ({name}: {time.time() - t0:.1f} s)", flush=True)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# ---------------------------------------------------------------------------- models
def darts(tiny: bool) -> tuple[nn.Module, tuple[int, ...], int]:
    """The DARTS supernet: as the default job builds it for digits (tiny), or at its default size."""
    import search_spaces

    if tiny:
        return search_spaces.create("darts", num_classes=10, in_chans=1, size="tiny"), (1, 8, 8), 10
    return search_spaces.create("darts"), tuple(search_spaces.info("darts").input_shape), 10


def cnn(small: bool) -> tuple[nn.Module, tuple[int, ...], int]:
    """A ResNet for the channel-pruning checks: torchvision's ResNet-18 (32×32) on a GPU, the CIFAR
    ResNet-20 at its tiny size (8×8) for the CPU smoke run."""
    if small:
        import search_spaces

        return search_spaces.create("resnet20", size="tiny", num_classes=10), (3, 8, 8), 10
    from otonas.models import import_torchvision

    return import_torchvision().models.resnet18(num_classes=10), (3, 32, 32), 10


# ---------------------------------------------------------------------------- 1. optimizers
class SyncCounter:
    """Counts the synchronising CUDA calls made inside ``with counter(kind):`` (GPU only)."""

    def __init__(self, dev: torch.device) -> None:
        self.on = dev.type == "cuda"
        self.counts: dict[str, int] = {}
        self.steps: dict[str, int] = {}
        self.first: dict[str, str] = {}

    def __call__(self, kind: str) -> Any:
        counter = self

        class _Ctx:
            def __enter__(self) -> None:
                counter.steps[kind] = counter.steps.get(kind, 0) + 1
                if counter.on:
                    self._w = warnings.catch_warnings(record=True)
                    self._log = self._w.__enter__()
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")

            def __exit__(self, *exc: Any) -> None:
                if counter.on:
                    torch.cuda.set_sync_debug_mode(0)
                    hits = [str(w.message) for w in self._log if "synchroniz" in str(w.message).lower()]
                    others = [w for w in self._log if "synchroniz" not in str(w.message).lower()]
                    self._w.__exit__(*exc)
                    for w in others:  # give the other warnings back
                        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                    if hits:
                        counter.counts[kind] = counter.counts.get(kind, 0) + len(hits)
                        counter.first.setdefault(kind, hits[0].splitlines()[0][:160])

        return _Ctx()

    def report(self) -> str:
        return ", ".join(f"{k}: {self.counts.get(k, 0)} in {n} steps" for k, n in self.steps.items())


def _batches(shape: tuple[int, ...], classes: int, n: int, batch: int, dev: torch.device,
             seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, *shape, generator=g).to(dev), torch.randint(0, classes, (batch,), generator=g).to(dev))
            for _ in range(n)]


def _train(model: nn.Module, opt: torch.optim.Optimizer, data: list[tuple[Tensor, Tensor]], steps: int,
           kind_of: Callable[[int], str], counter: SyncCounter) -> None:
    model.train()
    for t in range(steps):
        x, y = data[t % len(data)]
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        with counter(kind_of(t)):
            opt.step()


def _kind(start: int, end: int, periods: int, schedule: str) -> Callable[[int], str]:
    bounds = period_bounds(start, end, periods)

    def kind(t: int) -> str:
        if t < start:
            return "warm-up"
        if t >= end:
            return "first after" if t == end else "after"
        if schedule != "progressive":
            return "projection"
        p = max(i for i in range(len(bounds) - 1) if bounds[i] <= t)
        if t == bounds[p]:
            return "period start"
        if t == bounds[p + 1] - 1:
            return "period end"
        return "mid-period"

    return kind


def _sync_verdict(name: str, counter: SyncCounter) -> None:
    if not counter.on:
        record(f"{name}: no host read in mid-period steps", None,
               "GPU only (torch.cuda.set_sync_debug_mode); skipped on the CPU")
        return
    mid = counter.counts.get("mid-period", 0)
    detail = f"synchronising calls per kind of step: {counter.report()}"
    if mid:
        detail += f"; first in a mid-period step: {counter.first['mid-period']}"
    record(f"{name}: no host read in mid-period steps", mid == 0, detail)


def check_dhspg(dev: torch.device, small: bool, schedule: str, budget: str) -> None:
    name = f"DHSPG {schedule}" + (" target_flops=0.5" if budget == "flops" else " target_group_sparsity=0.5")
    torch.manual_seed(0)
    model, shape, classes = cnn(small)
    model.to(dev)
    space = otonas.analyze(model, (torch.randn(2, *shape, device=dev),))
    periods, per = 5, 4
    start, end = 3, 3 + periods * per
    kw: dict[str, Any] = dict(target_flops=0.5) if budget == "flops" else dict(target_group_sparsity=0.5)
    opt = DHSPG(space, lr=0.05, momentum=0.9, weight_decay=1e-4, warmup_steps=start, end_step=end, schedule=schedule,
                periods=periods, **kw)
    assert all(p.device.type == dev.type for p in model.parameters())
    data = _batches(shape, classes, 4, 16, dev)
    counter = SyncCounter(dev)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ForcedProjectionWarning)
        _train(model, opt, data, end + 3, _kind(start, end, periods, schedule), counter)
    zero = space.zero_groups()
    m = opt.metrics()
    n, k = opt.num_groups, opt.target_zero_groups
    exact = int(zero.sum()) == k and math.isclose(opt.group_sparsity(), k / n) and bool(
        np.array_equal(zero, opt.zero_groups().cpu().numpy()))
    detail = f"{int(zero.sum())} of {n} groups exactly zero, target {k}; forced {m['num_forced_groups']}"
    if budget == "flops":
        kept = space.costs(space.removable(zero)).flops / space.costs().flops
        detail += f"; FLOPs kept {kept:.3f} (optimizer's plan {opt.kept_fraction:.3f}, budget 0.5)"
        exact = exact and kept <= 0.5 + 1e-9
    record(f"{name}: exact zeros, exact sparsity", exact, detail)
    if schedule == "progressive":
        record(f"{name}: nothing forced", m["num_forced_groups"] == 0, f"num_forced_groups={m['num_forced_groups']}")
    else:
        record(f"{name}: forced groups (allowed with half_space)", True, f"num_forced_groups={m['num_forced_groups']}")
    _sync_verdict(name, counter)


def check_h2spg(dev: torch.device, small: bool) -> None:
    name = "H2SPG progressive erase_budget=0.5 (DARTS)"
    torch.manual_seed(0)
    model, shape, classes = darts(tiny=True)
    model.to(dev)
    space = otonas.analyze(model, (torch.randn(2, *shape, device=dev),))
    periods, per = 5, 3
    start, end = 2, 2 + periods * per
    opt = H2SPG(space, lr=0.05, momentum=0.9, weight_decay=1e-4, erase_budget=0.5, target_group_sparsity=0.1,
                warmup_steps=start, end_step=end, periods=periods)
    data = _batches(shape, classes, 4, 16, dev)
    counter = SyncCounter(dev)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BudgetWarning)
        _train(model, opt, data, end + 3, _kind(start, end, periods, "progressive"), counter)
    m = opt.metrics()
    accepted = opt.accepted
    erased_zero = space.zero_erasing_groups()
    all_zero = bool(erased_zero[accepted].all()) if accepted else False
    zero = opt.zero_groups().cpu().numpy()
    selected = np.asarray(opt.pruned, dtype=np.int64)
    live = selected[~opt.moot_groups[selected]]  # not inside an operator accepted later
    pruned = int(m["num_zero_groups"])  # zero prunable groups outside the accepted operators
    ok = (all_zero and len(accepted) == opt.target_erased_groups and m["num_forced_groups"] == 0
          and bool(zero[selected].all()) and pruned == len(live))
    record(f"{name}: exact zeros", ok,
           f"{len(accepted)} of {space.num_erasing_groups} erasing groups accepted (target {opt.target_erased_groups}), "
           f"all zero: {all_zero}; {len(selected)} prunable groups selected, all zero: {bool(zero[selected].all())}; "
           f"{pruned} zero outside the accepted operators, {len(live)} selected there (target "
           f"{opt.target_pruned_groups}); forced {m['num_forced_groups']}")
    subnet_ok = space.erasable(erased_zero).sum() >= len(accepted)
    record(f"{name}: the zero operators form a valid erasure", bool(subnet_ok),
           f"SearchSpace.erasable keeps {int(space.erasable(erased_zero).sum())} of the {int(erased_zero.sum())} "
           "zero erasing groups")
    _sync_verdict(name, counter)


# ---------------------------------------------------------------------------- 2. build and verify
def _compare(a: Tensor, b: Tensor) -> float:
    scale = float(a.double().abs().max())
    return float((a.double() - b.double()).abs().max()) / (scale if scale > 0 else 1.0)


def check_build_prune(dev: torch.device, small: bool) -> None:
    from otonas.testing import zero_groups_

    name = "build on CUDA: 30% of the groups zero" if dev.type == "cuda" else "build: 30% of the groups zero"
    torch.manual_seed(0)
    if small:
        model, shape, _ = cnn(True)
        label = "resnet20 (tiny)"
    else:
        from otonas.models import import_torchvision

        model, shape, label = import_torchvision().models.resnet50(), (3, 224, 224), "resnet50"
    model.to(dev).eval()
    space = otonas.analyze(model, (torch.randn(2, *shape, device=dev),))
    rng = np.random.default_rng(0)
    mask = np.zeros(space.num_prunable_groups, dtype=bool)
    mask[rng.permutation(space.num_prunable_groups)[: int(round(0.3 * space.num_prunable_groups))]] = True
    zero_groups_(space, mask)
    sub = otonas.build(space)
    sub.eval()
    x = torch.randn(3, *shape, device=dev)
    with torch.no_grad():
        ref, out = model(x), sub(x)
    rel = _compare(ref, out)
    n_full = sum(p.numel() for p in model.parameters())
    n_sub = sum(p.numel() for p in sub.parameters())
    on_dev = all(p.device.type == dev.type for p in sub.parameters())
    record(f"{name} ({label})", rel <= 1e-4 and n_sub < n_full and on_dev,
           f"max relative difference {rel:.2e} (tolerance 1e-4), parameters {n_sub / n_full:.3f} of the full "
           f"model's, subnet on {dev.type}: {on_dev}")


def check_build_erase(dev: torch.device) -> None:
    from otonas.testing import random_valid_erasure

    name = "build on CUDA: random valid erasure (DARTS)" if dev.type == "cuda" else "build: random valid erasure (DARTS)"
    torch.manual_seed(0)
    model, shape, _ = darts(tiny=True)
    model.to(dev).eval()
    space = otonas.analyze(model, (torch.randn(2, *shape, device=dev),))
    chosen = random_valid_erasure(space, 0.3, np.random.default_rng(0))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for i in np.nonzero(chosen)[0]:
            for fqn in space.erasing_groups[i].params:
                params[fqn].zero_()
    sub = otonas.build(space)
    sub.eval()
    x = torch.randn(3, *shape, device=dev)
    with torch.no_grad():
        ref, out = model(x), sub(x)
    rel = _compare(ref, out)
    n_full = sum(p.numel() for p in model.parameters())
    n_sub = sum(p.numel() for p in sub.parameters())
    record(name, rel <= 1e-4 and n_sub < n_full,
           f"{int(chosen.sum())} of {space.num_erasing_groups} operators erased; max relative difference {rel:.2e}, "
           f"parameters {n_sub / n_full:.3f} of the full model's")


# ---------------------------------------------------------------------------- 3. timing
def time_epochs(dev: torch.device, tiny: bool, steps_per_epoch: int, batch: int) -> None:
    label = "DARTS tiny, 1x8x8 (the default job's)" if tiny else "DARTS default size, 3x32x32"
    torch.manual_seed(0)
    model, shape, classes = darts(tiny)
    model.to(dev)
    space = otonas.analyze(model, (torch.randn(2, *shape, device=dev),))
    epochs = {"warm-up": 1, "projection": 2, "after": 2}
    total = sum(epochs.values())
    start, end = steps_per_epoch, 3 * steps_per_epoch
    m_sgd, m_h2 = copy.deepcopy(model), copy.deepcopy(model)
    sgd = torch.optim.SGD(m_sgd.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=True)
    h2 = H2SPG(space, model=m_h2, lr=0.1, momentum=0.9, weight_decay=1e-4, erase_budget=0.5, target_group_sparsity=0.0,
               warmup_steps=start, end_step=end, periods=5)
    data = _batches(shape, classes, steps_per_epoch, batch, dev, seed=1)

    def epoch(m: nn.Module, opt: torch.optim.Optimizer) -> float:
        m.train()
        sync(dev)
        t0 = time.perf_counter()
        for x, y in data:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
        sync(dev)
        return time.perf_counter() - t0

    m0 = copy.deepcopy(model)
    epoch(m0, torch.optim.SGD(m0.parameters(), lr=0.0))  # first use: kernels, caches
    t_sgd: list[float] = []
    t_h2: dict[str, list[float]] = {k: [] for k in epochs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BudgetWarning)
        for e in range(total):
            phase = "warm-up" if e < 1 else "projection" if e < 3 else "after"
            for which in ((0, 1) if e % 2 == 0 else (1, 0)):
                if which == 0:
                    t_sgd.append(epoch(m_sgd, sgd))
                else:
                    t_h2[phase].append(epoch(m_h2, h2))
    base = statistics.median(t_sgd)
    parts = [f"{k} {sum(v) / len(v):.2f} s ({sum(v) / len(v) / base:.2f}x)" for k, v in t_h2.items()]
    run = sum(sum(v) for v in t_h2.values()) / (base * total)
    erased = int(h2.zero_erasing_groups()[h2.accepted].sum()) if h2.accepted else 0
    record(f"H2SPG epoch against SGD on {dev.type}: {label}", True,
           f"{steps_per_epoch} steps of batch {batch}; SGD epoch {base:.2f} s (median of {len(t_sgd)}); H2SPG "
           + ", ".join(parts) + f"; whole run ({total} epochs) {run:.2f}x SGD's; {erased} of "
           f"{h2.target_erased_groups} operators zero at the end")


# ---------------------------------------------------------------------------- main
def time_subnets(dev: torch.device, small: bool) -> None:
    """Section 4: speed-up of ResNet subnets at FLOPs targets, full and subnets in turn."""
    from otonas.latency import measure_latency
    from otonas.models import resolve_model
    from otonas.testing import zero_groups_

    name, hw, batches = ("resnet18", 64, [8]) if small else ("resnet50", 224, [32, 1])
    torch.manual_seed(0)
    model = resolve_model(f"torchvision:{name}").model.eval()
    space = otonas.analyze(model, (torch.randn(2, 3, hw, hw),))
    base = space.costs().flops
    state = copy.deepcopy(model.state_dict())
    nets: list[tuple[str, nn.Module, float]] = [("full", copy.deepcopy(model), 1.0)]
    zeroed: list[nn.Module] = []
    for t in (0.5, 0.25):
        for r in (1, 16):
            model.load_state_dict(state)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                opt = DHSPG(space, lr=0.1, target_flops=t, round_to=r, warmup_steps=1, end_step=2)
            mask = np.zeros(space.num_prunable_groups, dtype=bool)
            assert opt.selector.cells is not None
            for members, k in zip(opt.selector.cells, opt.selector.quotas):
                mask[np.asarray(members)[:k]] = True
            zero_groups_(space, mask)
            kept = space.costs(removed=space.removable(mask)).flops / base
            nets.append((f"FLOPs {t:g}, round_to {r}", otonas.build(space).eval(), kept))
            zeroed.append(copy.deepcopy(model))
    model.load_state_dict(state)
    dtypes = [torch.float32] if dev.type == "cpu" else [torch.float16, torch.bfloat16]
    for dtype in dtypes:
        moved = [n.to(device=dev, dtype=dtype).to(memory_format=torch.channels_last) for _, n, _ in nets]
        x = torch.randn(2, 3, hw, hw, device=dev, dtype=dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():  # each subnet against its zeroed model, in this precision
            worst = max(_compare(m(x).float(), z.to(device=dev, dtype=dtype)(x).float())
                        for m, z in zip(moved[1:], zeroed))
        ok = worst < (5e-2 if dtype != torch.float32 else 1e-3)
        record(f"subnets in {str(dtype).replace('torch.', '')}, channels_last", ok,
               f"largest relative difference subnet vs zeroed model {worst:.2g}")
        for batch in batches:
            xb = torch.randn(batch, 3, hw, hw, device=dev, dtype=dtype).contiguous(memory_format=torch.channels_last)
            lat = measure_latency(moved, (xb,), repeats=20 if dev.type == "cuda" else 3, warmup=3)
            for (label, _, kept), sec in zip(nets, lat):
                print(f"| {name} | {label} | {str(dtype).replace('torch.', '')} | {batch} | {kept:.1%} | "
                      f"{sec * 1e3:.2f} ms | {lat[0] / sec:.2f}× | {1 / kept:.2f}× |", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="run on the CPU at a small size, GPU-only parts skipped")
    ap.add_argument("--require-cuda", action="store_true", help="exit 2 when no CUDA device is available")
    ap.add_argument("--skip-timing", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if args.require_cuda and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False) and --require-cuda was given",
              file=sys.stderr)
        return 2
    dev = torch.device("cuda" if cuda else "cpu")
    small = not cuda
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # exact comparisons between model and subnet
        torch.backends.cudnn.allow_tf32 = False
        print(f"# gpu_check on {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    else:
        why = "--cpu-smoke" if args.cpu_smoke else "no CUDA device"
        print(f"# gpu_check on the CPU ({why}): small models; the GPU-only checks (host reads under "
              "torch.cuda.set_sync_debug_mode) are skipped, timings are CPU figures, not GPU ones")
    print("\n## 1. optimizers on", dev.type)
    guarded("DHSPG progressive", lambda: check_dhspg(dev, small, "progressive", "groups"))
    guarded("DHSPG progressive target_flops", lambda: check_dhspg(dev, small, "progressive", "flops"))
    guarded("DHSPG half_space", lambda: check_dhspg(dev, small, "half_space", "groups"))
    guarded("H2SPG progressive", lambda: check_h2spg(dev, small))
    print("\n## 2. build and verify on", dev.type)
    guarded("build prune", lambda: check_build_prune(dev, small))
    guarded("build erase", lambda: check_build_erase(dev))
    if not args.skip_timing:
        print("\n## 3. H2SPG epoch against SGD on", dev.type)
        if cuda:
            guarded("timing tiny", lambda: time_epochs(dev, True, 23, 64))
            guarded("timing default", lambda: time_epochs(dev, False, 23, 64))
        else:
            guarded("timing tiny", lambda: time_epochs(dev, True, 6, 64))
            record("H2SPG epoch on the default-size DARTS", None, "GPU only; skipped on the CPU")
        print(f"\n## 4. subnet latency on {dev.type}, channels_last\n")
        print("| model | subnet | dtype | batch | FLOPs kept | latency | speed-up | FLOPs ratio |\n"
              "|---|---|---|---:|---:|---:|---:|---:|")
        guarded("subnet latency", lambda: time_subnets(dev, small))
    print(f"\n## Summary ({dev.type}, {time.time() - t0:.0f} s)\n")
    print("| check | result | detail |\n|---|---|---|")
    for name, status, detail in RESULTS:
        print(f"| {name} | {status} | {detail} |")
    failed = [r for r in RESULTS if r[1] == "FAIL"]
    print(f"\n{sum(r[1] == 'PASS' for r in RESULTS)} passed, {len(failed)} failed, "
          f"{sum(r[1] == 'SKIP' for r in RESULTS)} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
