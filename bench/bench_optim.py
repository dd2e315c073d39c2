"""Step time of DHSPG and H2SPG against torch.optim.SGD(foreach=True), each optimizer on its own model.

    python bench/bench_optim.py                       # ResNet-50 and the DARTS supernets, 1 and 2 threads, wd 1e-4 and 0
    python bench/bench_optim.py --quick               # a look in under a minute
    python bench/bench_optim.py --models resnet50 --threads 1 --weight-decays 1e-4 --repeat 60
    python bench/bench_optim.py --h2spg [--supernets darts,superresnet]   # H2SPG only, on supernets
    OTONAS_KERNELS=0 python bench/bench_optim.py ...  # the PyTorch path, without the fused loops

How it measures. Every optimizer gets its own deep copy of the model, hence its own parameters,
``.grad`` tensors and state: DHSPG writes into ``.grad`` (it masks the entries of zero groups)
and zeroes groups of its parameters, so optimizers that share parameters would step over
each other's zeros and masked gradients, and under-report the cost. The gradients are computed
once, by a real forward and backward pass on a batch of 8 (cross entropy on random labels), and
before every step a fresh clone of them is put into the stepping copy's ``.grad`` (not timed).
Only ``opt.step()`` is timed. The optimizers take their steps in turn, one each per round (the
order rotated every round), in one process, so that machine noise hits them alike; each figure
is the median over the rounds.

Phases, each an optimizer of its own (DHSPG, or H2SPG on a supernet):

* warm-up: a step before ``start_step`` (H2SPG: its scores and their moving average every step);
* progressive (the default schedule): a projection window of P periods (``--periods``) over
  the timed rounds, its steps told apart as period start (the groups re-scored and the period's
  selected: one host read), mid-period (the groups shrunk by (r − 1)/r) and period end (shrunk
  to exactly zero, then frozen);
* half_space: a projection-phase step of the old schedule (λ step and half-space test);
* after projection: after a progressive window, the zero groups held at zero.

Every ratio is that step's median over the median of the SGD step on the same model, settings
and rounds: ``torch.optim.SGD(lr, momentum=0.9, weight_decay, foreach=True)`` (the same
hyper-parameters as the DHSPG). ``--threads 1,2`` and ``--weight-decays 1e-4,0`` give every
combination. ``run average`` weighs the phases by the step counts of the default ``otonas
search`` job (12 epochs of 23 steps: 46 warm-up, 69 projection in 5 periods, 161 after).

Models: ``resnet50`` (torchvision, 224×224), ``darts-tiny`` (``search_spaces`` DARTS as the
default ``otonas search`` job builds it for digits: ``size="tiny"``, 1 channel 8×8, 10 classes),
``darts`` / ``superresnet`` / ... (a ``search_spaces`` entry at its default size) and
``transformer`` (one encoder block). Prints markdown tables, with the load average.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from otonas.optim import (DHSPG, H2SPG, SCORES, BudgetWarning, ForcedProjectionWarning, kernels_enabled,  # noqa: E402
                          make_score, period_bounds)

HUGE = 10**9
# The default `otonas search` job's schedule (digits, 12 epochs of 23 steps, warm-up 1/6 and
# projection 1/4 of the epochs, 5 periods): its step counts weigh the phases in "run average".
JOB_STEPS, JOB_START, JOB_END, JOB_PERIODS = 276, 46, 115, 5


def load() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


# ---------------------------------------------------------------------------- models and gradients
def make_model(name: str) -> tuple[nn.Module, tuple[Tensor, ...]]:
    """The model and an example input (batch 1) for ``otonas.analyze``."""
    if name == "resnet50":
        from otonas.models import import_torchvision

        return import_torchvision().models.resnet50(), (torch.randn(1, 3, 224, 224),)
    if name == "transformer":
        block = nn.TransformerEncoderLayer(d_model=768, nhead=12, dim_feedforward=3072, batch_first=True,
                                           dropout=0.0)
        return block, (torch.randn(1, 16, 768),)
    import search_spaces

    if name == "darts-tiny":  # as otonas.search.prepare builds the default job's model for digits
        return (search_spaces.create("darts", num_classes=10, in_chans=1, size="tiny"),
                (torch.randn(1, 1, 8, 8),))
    if name in search_spaces.list():
        return search_spaces.create(name), (torch.randn(1, *search_spaces.info(name).input_shape),)
    raise SystemExit(f"unknown model {name!r}; expected resnet50, transformer, darts-tiny or a search_spaces "
                     f"entry ({', '.join(search_spaces.list())})")


def real_grads(model: nn.Module, example: tuple[Tensor, ...], batch: int = 8) -> list[Tensor]:
    """Gradients of every trainable parameter from one forward and backward pass on ``batch``
    inputs shaped like ``example`` (cross entropy on random labels; mean of squares for
    outputs that are not logits); the model's ``.grad`` is cleared again."""
    torch.manual_seed(1)
    model.train()
    xs = tuple(torch.randn(batch, *t.shape[1:]) for t in example)
    out = model(*xs)
    if out.dim() == 2:
        loss = nn.functional.cross_entropy(out, torch.randint(0, out.shape[1], (batch,)))
    else:
        loss = out.float().pow(2).mean()
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    for p in params:
        p.grad = None
    return grads


# ---------------------------------------------------------------------------- the timed optimizers
@dataclass
class Arm:
    """One optimizer on its own copy of the model, and its step times per phase."""

    label: str
    opt: torch.optim.Optimizer
    params: list[Tensor]
    phase: Callable[[int], str | None]  # step number -> the phase it is timed as (None: not timed)
    prep: int = 0  # untimed steps first (to reach the phase; first use of the loops)
    steps: int = 0
    times: dict[str, list[float]] = field(default_factory=dict)

    def step(self, grads: Sequence[Tensor], timed: bool = True) -> None:
        for p, g in zip(self.params, grads):
            p.grad = g.clone()  # fresh: DHSPG masks .grad in place
        t0 = time.perf_counter()
        self.opt.step()
        dt = time.perf_counter() - t0
        ph = self.phase(self.steps) if timed else None
        if ph is not None:
            self.times.setdefault(ph, []).append(dt)
        self.steps += 1


def _progressive_phase(start: int, end: int, periods: int) -> Callable[[int], str | None]:
    bounds = period_bounds(start, end, periods)

    def phase(t: int) -> str | None:
        if not start <= t < end:
            return None
        p = max(i for i in range(len(bounds) - 1) if bounds[i] <= t)
        if t == bounds[p]:
            return "progressive: period start"
        if t == bounds[p + 1] - 1:
            return "progressive: period end"
        return "progressive: mid-period"

    return phase


def build_arms(kind: str, model: nn.Module, space: Any, *, rounds: int, periods: int, lr: float, wd: float,
               target: float, h2_target: float, budget: float, variant: str, score: str | None = None) -> list[Arm]:
    """The baseline and the optimizer ``kind`` ("dhspg" or "h2spg") in each phase, each on a deep copy."""

    def fresh() -> tuple[nn.Module, list[Tensor]]:
        m = copy.deepcopy(model)
        return m, [p for p in m.parameters() if p.requires_grad]

    base_kw: dict[str, Any] = dict(lr=lr, weight_decay=wd, variant=variant)
    if score is not None:
        base_kw["score"] = make_score(score)
    if variant == "sgd":
        base_kw["momentum"] = 0.9

    def make(start: int, end: int, schedule: str) -> tuple[torch.optim.Optimizer, list[Tensor]]:
        m, params = fresh()
        if kind == "dhspg":  # each on its own copy of the model (model=): layouts name parameters
            opt: torch.optim.Optimizer = DHSPG(space, model=m, target_group_sparsity=target, warmup_steps=start, end_step=end,
                                               schedule=schedule, periods=periods, **base_kw)
        else:
            opt = H2SPG(space, model=m, target_group_sparsity=h2_target, erase_budget=budget, warmup_steps=start, end_step=end,
                        schedule=schedule, periods=periods, **base_kw)
        return opt, params

    name = kind.upper()
    m, params = fresh()
    if variant == "sgd":
        base: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd, foreach=True)
    else:
        cls = torch.optim.Adam if variant == "adam" else torch.optim.AdamW
        base = cls(params, lr=lr, weight_decay=wd, foreach=True)
    arms = [Arm("base", base, params, lambda t: "base", prep=2)]
    opt, params = make(HUGE, HUGE + 1, "progressive")
    arms.append(Arm(name, opt, params, lambda t: "warm-up", prep=2))
    prep = 2  # warm-up steps, untimed; then the window of `rounds` timed steps
    opt, params = make(prep, prep + rounds, "progressive")
    arms.append(Arm(name, opt, params, _progressive_phase(prep, prep + rounds, periods), prep=prep))
    # half_space: step 0 warm-up, step 1 the partition (once), then projection steps
    opt, params = make(1, HUGE, "half_space")
    arms.append(Arm(name, opt, params, lambda t: "half_space: projection", prep=2))
    # after: a window of one step per period (every group zero by construction), then held at zero
    opt, params = make(0, periods, "progressive")
    arms.append(Arm(name, opt, params, lambda t: "after projection", prep=periods + 2))
    return arms


def run_arms(arms: list[Arm], grads: Sequence[Tensor], rounds: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ForcedProjectionWarning)
        warnings.simplefilter("ignore", BudgetWarning)
        for a in arms:
            for _ in range(a.prep):
                a.step(grads, timed=False)
        for r in range(rounds):
            k = r % len(arms)
            for a in arms[k:] + arms[:k]:
                a.step(grads)


PHASES = ("warm-up", "progressive: mid-period", "progressive: period start", "progressive: period end",
          "half_space: projection", "after projection")


def _ms(ts: Sequence[float]) -> float:
    return 1e3 * statistics.median(ts)


def run_average(t: dict[str, float]) -> float:
    """A step's mean time over the default job's schedule, from the per-phase medians."""
    bounds = period_bounds(JOB_START, JOB_END, JOB_PERIODS)
    starts = len(bounds) - 1
    ends = starts
    mids = (JOB_END - JOB_START) - starts - ends
    total = (JOB_START * t["warm-up"] + starts * t["progressive: period start"]
             + ends * t["progressive: period end"] + mids * t["progressive: mid-period"]
             + (JOB_STEPS - JOB_END) * t["after projection"])
    return total / JOB_STEPS


@dataclass
class Result:
    model: str
    kind: str
    threads: int
    wd: float
    load_before: str
    load_after: str
    base_ms: float
    base_n: int
    phases: dict[str, tuple[float, int]]  # phase -> (median ms, samples)
    forced: int
    zero_groups: float


def measure(model_name: str, kind: str, model: nn.Module, space: Any, grads: Sequence[Tensor], *, threads: int,
            wd: float, rounds: int, periods: int, lr: float, target: float, h2_target: float, budget: float,
            variant: str, score: str | None = None) -> Result:
    torch.set_num_threads(threads)
    before = load()
    arms = build_arms(kind, model, space, rounds=rounds, periods=periods, lr=lr, wd=wd, target=target,
                      h2_target=h2_target, budget=budget, variant=variant, score=score)
    run_arms(arms, grads, rounds)
    after = load()
    base = arms[0].times["base"]
    phases: dict[str, tuple[float, int]] = {}
    for a in arms[1:]:
        for ph, ts in a.times.items():
            phases[ph] = (_ms(ts), len(ts))
    done = arms[-1].opt
    m = done.metrics()  # type: ignore[attr-defined]
    res = Result(model_name, kind, threads, wd, before, after, _ms(base), len(base), phases,
                 int(m["num_forced_groups"]), float(m["group_sparsity"]))
    del arms
    gc.collect()
    return res


def table(results: Sequence[Result], base: str) -> list[str]:
    rows = [f"| model | optimizer | threads | weight decay | phase | {base} step (ms) | step (ms) | ratio | "
            "samples | load before → after |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for ph in PHASES:
            if ph not in r.phases:
                continue
            t, n = r.phases[ph]
            rows.append(f"| {r.model} | {r.kind.upper()} | {r.threads} | {r.wd:g} | {ph} | {r.base_ms:.2f} | "
                        f"{t:.2f} | {t / r.base_ms:.2f}x | {n} | {r.load_before} → {r.load_after} |")
        if all(ph in r.phases for ph in PHASES if ph != "half_space: projection"):
            avg = run_average({k: v[0] for k, v in r.phases.items()})
            rows.append(f"| {r.model} | {r.kind.upper()} | {r.threads} | {r.wd:g} | run average (default job's "
                        f"schedule) | {r.base_ms:.2f} | {avg:.2f} | {avg / r.base_ms:.2f}x | | |")
    return rows


def summary(results: Sequence[Result]) -> list[str]:
    """Per model and optimizer: the range of each phase's ratio over threads and weight decays."""
    out = ["| model | optimizer | " + " | ".join(PHASES) + " | worst |", "|---" * (len(PHASES) + 3) + "|"]
    keys = list(dict.fromkeys((r.model, r.kind) for r in results))
    for model, kind in keys:
        rs = [r for r in results if (r.model, r.kind) == (model, kind)]
        cells, worst = [], 0.0
        for ph in PHASES:
            ratios = [r.phases[ph][0] / r.base_ms for r in rs if ph in r.phases]
            if not ratios:
                cells.append("")
                continue
            lo, hi = min(ratios), max(ratios)
            worst = max(worst, hi)
            cells.append(f"{lo:.2f}–{hi:.2f}x" if len(ratios) > 1 else f"{lo:.2f}x")
        out.append(f"| {model} | {kind.upper()} | " + " | ".join(cells) + f" | {worst:.2f}x |")
    return out


# ---------------------------------------------------------------------------- bench_optim_h2spg.py's entry
def time_h2spg(name: str, model: nn.Module, inputs: tuple, repeat: int, budget: float, target: float,
               weight_decay: float) -> list[str]:
    """Table rows ``| model | params | groups | H2SPG phase | SGD step (ms) | H2SPG step (ms) | ratio |``
    for H2SPG on ``model``, measured as ``measure`` does (own copies, real gradients)."""
    import otonas

    space = otonas.analyze(model, inputs)
    grads = real_grads(model, inputs)
    rounds = max(repeat, 3 * 5)
    r = measure(name, "h2spg", model, space, grads, threads=torch.get_num_threads(), wd=weight_decay,
                rounds=rounds, periods=5, lr=0.1, target=target, h2_target=target, budget=budget, variant="sgd")
    nparams = sum(p.numel() for p in model.parameters() if p.requires_grad)
    groups = f"{space.num_prunable_groups} + {space.num_erasing_groups} erasing"
    return [f"| {name} | {nparams / 1e6:.1f} M | {groups} | {ph} | {r.base_ms:.1f} | {r.phases[ph][0]:.1f} | "
            f"{r.phases[ph][0] / r.base_ms:.2f}x |" for ph in PHASES if ph in r.phases]


# ---------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None,
                    help="comma-separated (default resnet50,darts-tiny,darts; --quick: resnet50,darts-tiny)")
    ap.add_argument("--optimizers", default=None,
                    help="dhspg,h2spg (default: dhspg on every model, h2spg too on supernets)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="timed rounds per setting, each optimizer one step per round (default 40; --quick 9); "
                         "at least 3 per period")
    ap.add_argument("--threads", default=None, help="torch.set_num_threads values, comma-separated (default 1,2)")
    ap.add_argument("--weight-decays", default=None, help="comma-separated (default 1e-4,0)")
    ap.add_argument("--weight-decay", type=float, default=None, help="one weight decay (same as --weight-decays X)")
    ap.add_argument("--periods", type=int, default=None, help="periods of the progressive window (default 5; --quick 3)")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--target", type=float, default=0.5, help="DHSPG's target_group_sparsity")
    ap.add_argument("--h2spg-target", type=float, default=0.0,
                    help="H2SPG's target_group_sparsity (0: the default job's erase mode)")
    ap.add_argument("--erase-budget", type=float, default=0.5)
    ap.add_argument("--variant", default="sgd", choices=("sgd", "adam", "adamw"),
                    help="the base rule, timed against torch's SGD (momentum 0.9), Adam or AdamW (foreach)")
    ap.add_argument("--score", default=None, choices=SCORES,
                    help="the redundancy score of every DHSPG / H2SPG (default: the optimizer's own, "
                         "cosine_magnitude); norm_affine is otonas search --mode prune's")
    ap.add_argument("--h2spg", action="store_true", help="H2SPG only, on --supernets")
    ap.add_argument("--supernets", default="darts,superresnet")
    ap.add_argument("--quick", action="store_true",
                    help="DHSPG on resnet50 and darts-tiny, 1 thread, weight decay 1e-4, 3 periods of 3 rounds")
    args = ap.parse_args()

    import otonas
    import search_spaces

    if args.quick:
        models = (args.models or "resnet50,darts-tiny").split(",")
        args.periods = args.periods or 3
        args.optimizers = args.optimizers or "dhspg"
        rounds = args.repeat or 3 * args.periods
        threads = [int(t) for t in (args.threads or "1").split(",")]
        wds = [args.weight_decay if args.weight_decay is not None else 1e-4] if args.weight_decays is None else [
            float(w) for w in args.weight_decays.split(",")]
    else:
        models = (args.models or (args.supernets if args.h2spg else "resnet50,darts-tiny,darts")).split(",")
        args.periods = args.periods or 5
        rounds = args.repeat or 40
        threads = [int(t) for t in (args.threads or "1,2").split(",")]
        wds = ([args.weight_decay] if args.weight_decay is not None else
               [float(w) for w in (args.weight_decays or "1e-4,0").split(",")])
    rounds = max(rounds, 3 * args.periods)
    base = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}[args.variant]
    print(f"# torch {torch.__version__}, {os.cpu_count()} cores, otonas' fused loops "
          f"{'on' if kernels_enabled() else 'off'}; lr {args.lr}, {'momentum 0.9, ' if args.variant == 'sgd' else ''}"
          f"DHSPG target_group_sparsity {args.target}, H2SPG erase_budget {args.erase_budget} and "
          f"target_group_sparsity {args.h2spg_target}, {args.periods} periods, score {args.score or 'cosine_magnitude'}; median of {rounds} rounds "
          f"(each optimizer on its own model copy, real batch-8 gradients cloned into .grad before every step); "
          f"load average {load()} at {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    t_start = time.time()
    results: list[Result] = []
    for name in (m.strip() for m in models):
        torch.manual_seed(0)
        model, example = make_model(name)
        supernet = name == "darts-tiny" or (name in search_spaces.list() and search_spaces.info(name).kind == "supernet")
        kinds = (args.optimizers.split(",") if args.optimizers else
                 ["h2spg"] if args.h2spg else (["dhspg", "h2spg"] if supernet else ["dhspg"]))
        space = otonas.analyze(model, example)
        grads = real_grads(model, example)
        nparams = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"# {name}: {nparams / 1e6:.2f} M parameters in {len(grads)} tensors, {space.num_prunable_groups} "
              f"prunable groups, {space.num_erasing_groups} erasing groups", flush=True)
        for kind in kinds:
            for th in threads:
                for wd in wds:
                    r = measure(name, kind, model, space, grads, threads=th, wd=wd, rounds=rounds,
                                periods=args.periods, lr=args.lr, target=args.target, h2_target=args.h2spg_target,
                                budget=args.erase_budget, variant=args.variant, score=args.score)
                    results.append(r)
                    print("\n".join(table([r], base)[2:]), flush=True)
                    if r.forced:
                        print(f"# warning: {r.forced} groups forced to zero in the progressive window", flush=True)
        del model, space, grads
        gc.collect()
    print()
    print("\n".join(table(results, base)))
    print()
    print(f"Ratio ranges over threads {','.join(map(str, threads))} and weight decays "
          f"{','.join(f'{w:g}' for w in wds)}:")
    print()
    print("\n".join(summary(results)))
    print(f"\n# {time.time() - t_start:.0f} s; load average {load()} at {time.strftime('%H:%M:%S')}")


if __name__ == "__main__":
    main()
