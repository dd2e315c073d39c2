"""Step time of DHSPG and H2SPG against torch.optim.SGD(foreach=True).

    python bench/bench_optim.py [--repeat 15] [--models resnet50,transformer] [--synthetic] [--variant adam]
    OTONAS_KERNELS=0 python bench/bench_optim.py ...   # the PyTorch path, without the fused loops
    python bench/bench_optim.py --h2spg [--supernets darts,superresnet] [--erase-budget 0.5]

Groups come from ``otonas.analyze`` (``--synthetic``: every conv / linear output channel its
own group over weight dim 0, with its BN weight and bias and the consumers' input columns).
Gradients are fixed random tensors, so only ``opt.step()`` is timed. DHSPG is timed in its
three phases: warm-up (base step), projection (start_step ≤ step < end_step: group
statistics, λ step and half-space projection every step) and after the projection (base
step with the zero groups held at zero). Both optimizers use momentum 0.9 and weight decay
1e-4 (``--weight-decay``); timings alternate between the optimizers so that machine noise hits both alike; each
figure is a median. Prints one markdown table row per model and phase.

``--h2spg`` times H2SPG instead, on supernets from ``search_spaces`` at their default size
(analysed by ``otonas.analyze``): warm-up (base step plus the per-step redundancy scores of
every prunable and erasing group for the moving average), projection (on the selected
erasing groups and channels) and after it; the one-time selection is reported as well.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from otonas.optim import DHSPG, H2SPG, BudgetWarning, ForcedProjectionWarning, _kernels  # noqa: E402


class _Space:
    def __init__(self, model: nn.Module, layout: dict[str, list[tuple[int, Tensor]]], n: int) -> None:
        self.model = model
        self.num_prunable_groups = n
        self._layout = layout

    def group_layout(self) -> dict[str, list[tuple[int, Tensor]]]:
        return self._layout


def synthetic_space(model: nn.Module) -> _Space:
    """Each conv / linear output channel is a group: its weight row, bias, the following BN's
    weight and bias, and the input column of the next conv / linear of matching width."""
    layout: dict[str, list[tuple[int, Tensor]]] = {}
    n = 0
    last: Tensor | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            w = mod.weight
            if last is not None and w.shape[1] == last.numel() and (not isinstance(mod, nn.Conv2d) or mod.groups == 1):
                layout.setdefault(f"{name}.weight", []).append((1, last))
            ids = torch.arange(n, n + w.shape[0])
            n += w.shape[0]
            layout.setdefault(f"{name}.weight", []).append((0, ids))
            if mod.bias is not None:
                layout[f"{name}.bias"] = [(0, ids)]
            last = ids
        elif isinstance(mod, (nn.BatchNorm2d, nn.LayerNorm)) and last is not None and mod.weight is not None:
            if mod.weight.shape[0] == last.numel() and isinstance(mod, nn.BatchNorm2d):
                layout[f"{name}.weight"] = [(0, last)]
                layout[f"{name}.bias"] = [(0, last)]
    return _Space(model, layout, n)


def make_model(name: str) -> tuple[nn.Module, tuple[Tensor, ...]]:
    if name == "resnet50":
        from otonas._torchvision import import_torchvision

        return import_torchvision().models.resnet50(), (torch.randn(1, 3, 224, 224),)
    if name == "transformer":
        block = nn.TransformerEncoderLayer(d_model=768, nhead=12, dim_feedforward=3072, batch_first=True,
                                           dropout=0.0)
        return block, (torch.randn(1, 16, 768),)
    raise SystemExit(f"unknown model {name!r}; expected resnet50 or transformer")


def build_space(model: nn.Module, inputs: tuple[Tensor, ...], synthetic: bool) -> tuple[object, str]:
    if not synthetic:
        try:
            import otonas

            return otonas.analyze(model, inputs), "otonas.analyze"
        except Exception as e:  # noqa: BLE001 - fall back, and say so in the output
            print(f"# otonas.analyze failed ({type(e).__name__}: {e}); using the synthetic layout", file=sys.stderr)
    return synthetic_space(model), "synthetic"


def median_ms(fns: list[Callable[[], None]], repeat: int) -> list[float]:
    times: list[list[float]] = [[] for _ in fns]
    for f in fns:
        f()
    for _ in range(repeat):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            f()
            times[i].append(time.perf_counter() - t0)
    return [1e3 * statistics.median(t) for t in times]


def bench(name: str, repeat: int, synthetic: bool, target: float, weight_decay: float,
          variant: str = "sgd") -> list[str]:
    torch.manual_seed(0)
    rows = []
    model, inputs = make_model(name)
    space, source = build_space(model, inputs, synthetic)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    nparams = sum(p.numel() for p in params)
    if variant == "sgd":
        kw = dict(lr=1e-3, momentum=0.9, weight_decay=weight_decay)
        sgd = torch.optim.SGD(params, foreach=True, **kw)
    else:  # DHSPG's Adam / AdamW against torch's, same settings
        kw = dict(lr=1e-3, weight_decay=weight_decay, variant=variant)
        cls = torch.optim.Adam if variant == "adam" else torch.optim.AdamW
        sgd = cls(params, lr=1e-3, weight_decay=weight_decay, foreach=True)
    huge = 10**9
    warm = DHSPG(space, target_group_sparsity=target, start_step=huge, end_step=huge + 1, **kw)  # type: ignore[arg-type]
    proj = DHSPG(space, target_group_sparsity=target, start_step=0, end_step=huge, **kw)  # type: ignore[arg-type]
    done = DHSPG(space, target_group_sparsity=target, start_step=0, end_step=1, **kw)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ForcedProjectionWarning)
        proj.step()  # the partition (once)
        done.step()  # partition + forced projection: G_r is zero from here on
    t_sgd, t_warm, t_proj, t_done = median_ms([sgd.step, warm.step, proj.step, done.step], repeat)
    n = proj.num_groups
    for phase, t in (("warm-up", t_warm), ("projection", t_proj), ("after projection", t_done)):
        rows.append(f"| {name} | {nparams / 1e6:.1f} M | {n} ({source}) | {phase} | {t_sgd:.1f} | {t:.1f} | "
                    f"{t / t_sgd:.2f}x |")
    return rows


def bench_h2spg(name: str, repeat: int, budget: float, target: float, weight_decay: float) -> list[str]:
    import search_spaces

    torch.manual_seed(0)
    model = search_spaces.create(name)
    inputs = (torch.randn(2, *search_spaces.info(name).input_shape),)
    return time_h2spg(name, model, inputs, repeat, budget, target, weight_decay)


def time_h2spg(name: str, model: torch.nn.Module, inputs: tuple, repeat: int, budget: float, target: float,
               weight_decay: float) -> list[str]:
    """Table rows: H2SPG's step in each phase (and its selection, once) against SGD's."""
    import otonas

    space = otonas.analyze(model, inputs)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    nparams = sum(p.numel() for p in params)
    kw = dict(lr=1e-3, momentum=0.9, weight_decay=weight_decay, erase_budget=budget, target_group_sparsity=target)
    sgd = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=weight_decay, foreach=True)
    huge = 10**9
    warm = H2SPG(space, warmup_steps=huge, end_step=huge + 1, **kw)  # type: ignore[arg-type]
    proj = H2SPG(space, warmup_steps=0, end_step=huge, **kw)  # type: ignore[arg-type]
    done = H2SPG(space, warmup_steps=0, end_step=1, **kw)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ForcedProjectionWarning)
        warnings.simplefilter("ignore", BudgetWarning)
        t0 = time.perf_counter()
        proj.step()  # the selection (once)
        t_select = 1e3 * (time.perf_counter() - t0)
        done.step()  # selection + forced projection: everything selected is zero from here on
    t_sgd, t_warm, t_proj, t_done = median_ms([sgd.step, warm.step, proj.step, done.step], repeat)
    m = proj.metrics()
    groups = (f"{space.num_prunable_groups} + {space.num_erasing_groups} erasing "
              f"({m['num_accepted_erasing_groups']} accepted)")
    rows = []
    for phase, t in (("warm-up (scores + EMA)", t_warm), ("projection", t_proj), ("after projection", t_done)):
        rows.append(f"| {name} | {nparams / 1e6:.1f} M | {groups} | {phase} | {t_sgd:.1f} | {t:.1f} | "
                    f"{t / t_sgd:.2f}x |")
    rows.append(f"| {name} | {nparams / 1e6:.1f} M | {groups} | selection (once) | | {t_select:.0f} | |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50,transformer")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--synthetic", action="store_true", help="hand-made layout instead of otonas.analyze")
    ap.add_argument("--variant", default="sgd", choices=("sgd", "adam", "adamw"),
                    help="DHSPG's base optimizer, timed against torch's (SGD, Adam or AdamW, foreach)")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--h2spg", action="store_true", help="time H2SPG on supernets instead of DHSPG")
    ap.add_argument("--supernets", default="darts,superresnet")
    ap.add_argument("--erase-budget", type=float, default=0.5)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.h2spg:
        print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, erase_budget={args.erase_budget}, "
              f"target_group_sparsity={args.target}, momentum 0.9, weight_decay={args.weight_decay}, "
              f"median of {args.repeat} steps")
        print("| supernet | params | groups | H2SPG phase | SGD step (ms) | H2SPG step (ms) | ratio |")
        print("|---|---|---|---|---|---|---|")
        for name in args.supernets.split(","):
            for row in bench_h2spg(name.strip(), args.repeat, args.erase_budget, args.target, args.weight_decay):
                print(row, flush=True)
        return
    base = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}[args.variant]
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, target_group_sparsity={args.target}, "
          f"{'momentum 0.9, ' if args.variant == 'sgd' else ''}weight_decay={args.weight_decay}, "
          f"median of {args.repeat} steps, otonas' fused loops {'on' if _kernels.enabled() else 'off'}")
    print(f"| model | params | groups | DHSPG phase | {base} step (ms) | DHSPG step (ms) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for row in bench(name.strip(), args.repeat, args.synthetic, args.target, args.weight_decay, args.variant):
            print(row, flush=True)


if __name__ == "__main__":
    main()
