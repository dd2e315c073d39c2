"""Tuning benchmarks (issue: otonas tune) on digits with ``search_spaces:resnet20``.

``front``:  one global-budget study (accuracy, FLOPs); prints every complete trial by sparsity
            and the Pareto front, and whether accuracy falls as sparsity rises (Spearman rho).
``stages``: does per-stage tuning earn its keep? A per-stage study; its most accurate trial at
            <= MAX_FLOPS of the full model's FLOPs is re-run with fresh seeds, beside the single
            global sparsity that keeps at least the same FLOPs (the sparsest such trial of the
            global study of ``front``, re-run with the same seeds); mean +- std of each.

    python bench/bench_tune.py front  --out /tmp/bench_tune --trials 24 --trial-epochs 10
    python bench/bench_tune.py stages --out /tmp/bench_tune --trials 24 --trial-epochs 10 --seeds 3

Both print markdown tables for bench/README.md (with the command, the machine's load, the
time taken). ``stages`` needs the global study of ``front`` in the same --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

from otonas.search import SearchConfig, search
from otonas.tuning import TuneConfig, format_front, tune

MODEL, DATA = "search_spaces:resnet20", "digits"


def _search_opts(args: argparse.Namespace) -> dict:
    return {"lr": args.lr, "batch_size": args.batch_size, "progress": False}


def _load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _spearman(x: list[float], y: list[float]) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1]) if len(x) > 2 else float("nan")


def _cfg(args: argparse.Namespace, study: str, space: dict) -> TuneConfig:
    return TuneConfig(out=os.path.join(args.out, study), model=MODEL, data=DATA, trials=args.trials,
                      trial_epochs=args.trial_epochs, objectives="accuracy,flops", space=space, study=study,
                      storage=f"sqlite:///{os.path.abspath(args.out)}/bench_tune.db", seed=args.seed,
                      search=_search_opts(args), progress=False, pruner=args.pruner)


def front(args: argparse.Namespace) -> dict:
    t0, load0 = time.time(), _load()
    result = tune(_cfg(args, "global", {"sparsity": [0.1, 0.9], "per": "global"}))
    rows = sorted((r for r in result["trials"] if r["state"] == "complete"), key=lambda r: r["budgets"]["sparsity"])
    print(f"\n### Pareto front, global budget ({len(rows)} complete trials, "
          f"{result['counts']['pruned']} pruned; {time.time() - t0:.0f} s; at start {load0})\n")
    print("| trial | sparsity | FLOPs kept | params kept | val accuracy | on the front |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['trial']} | {r['budgets']['sparsity']:.3f} | {100 * r['flops_ratio']:.1f}% | "
              f"{100 * r['params_ratio']:.1f}% | {100 * r['accuracy']:.2f}% | "
              f"{'yes' if r['trial'] in result['front'] else ''} |")
    sp = [r["budgets"]["sparsity"] for r in rows]
    rho_f = _spearman(sp, [r["flops_ratio"] for r in rows])
    rho_a = _spearman(sp, [r["accuracy"] for r in rows])
    print(f"\nSpearman rank correlation with sparsity: FLOPs kept {rho_f:+.2f}, accuracy {rho_a:+.2f}")
    print("\n```\n" + format_front(result) + "\n```")
    return result


def _run(args: argparse.Namespace, sparsity: float | dict, seed: int, tag: str) -> dict:
    out = os.path.join(args.out, "reruns", f"{tag}-seed{seed}")
    cfg = SearchConfig(out=out, model=MODEL, data=DATA, epochs=args.trial_epochs, seed=seed, mode="prune",
                       target_sparsity=sparsity, export=False, **_search_opts(args))
    r = search(cfg)
    return {"accuracy": r["accuracy_subnet"], "flops_ratio": r["flops_after"] / r["flops_before"]}


def stages(args: argparse.Namespace) -> None:
    t0, load0 = time.time(), _load()
    glob = tune(_cfg(args, "global", {"sparsity": [0.1, 0.9], "per": "global"}))  # resumes front's study
    staged = tune(_cfg(args, "stage", {"sparsity": [0.0, 0.9], "per": "stage"}))
    cand = [r for r in staged["trials"] if r["state"] == "complete" and r["flops_ratio"] <= args.max_flops]
    if not cand:
        sys.exit(f"no per-stage trial kept <= {args.max_flops:.0%} of the FLOPs; run more trials")
    best = max(cand, key=lambda r: r["accuracy"])
    budgets = {k.split(":", 1)[1]: v for k, v in best["budgets"].items()}
    # the global sparsity to compare with: the sparsest global trial that still keeps at least
    # the per-stage trial's FLOPs (so the comparison, if anything, favours the global budget)
    pts = [(r["flops_ratio"], r["budgets"]["sparsity"]) for r in glob["trials"] if r["state"] == "complete"]
    above = [sp for fr, sp in pts if fr >= best["flops_ratio"]]
    if not above:
        sys.exit("no global trial keeps as many FLOPs as the per-stage one; run more global trials")
    s_globs = sorted(set(above), reverse=True)[:2]  # the two sparsest such: FLOPs vary a little by seed
    seeds = list(range(1, args.seeds + 1))
    per = [_run(args, budgets, s, "stage") for s in seeds]
    ones = {g: [_run(args, g, s, f"global{g:.3f}") for s in seeds] for g in s_globs}

    def ms(xs: list[float]) -> str:
        return f"{100 * statistics.mean(xs):.2f} ± {100 * (statistics.stdev(xs) if len(xs) > 1 else 0):.2f}"

    print(f"\n### Per-stage against global budget at <= {args.max_flops:.0%} FLOPs "
          f"({time.time() - t0:.0f} s; at start {load0})\n")
    print(f"Best per-stage trial {best['trial']} (of {len(cand)} at <= {args.max_flops:.0%} FLOPs): "
          + ", ".join(f"{k} {v:.2f}" for k, v in budgets.items())
          + f"; in its trial: {100 * best['accuracy']:.2f}% at {100 * best['flops_ratio']:.1f}% FLOPs. "
          f"Global sparsities compared: {', '.join(f'{g:.3f}' for g in s_globs)}, the sparsest of the {len(pts)} "
          f"global trials that kept at least as many FLOPs in their trial.\n")
    print(f"| budget | FLOPs kept (mean) | val accuracy, mean ± std over seeds {seeds} |")
    print("|---|---|---|")
    print(f"| per stage (trial {best['trial']}) | {100 * statistics.mean(r['flops_ratio'] for r in per):.1f}% | "
          f"{ms([r['accuracy'] for r in per])} |")
    for g, one in ones.items():
        print(f"| global {g:.3f} | {100 * statistics.mean(r['flops_ratio'] for r in one):.1f}% | "
              f"{ms([r['accuracy'] for r in one])} |")
    with open(os.path.join(args.out, "stages.json"), "w") as f:
        json.dump({"best": best, "budgets": budgets, "global": {str(g): v for g, v in ones.items()},
                   "per_stage": per},
                  f, indent=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["front", "stages"])
    p.add_argument("--out", default="/tmp/bench_tune")
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--trial-epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--pruner", default="median", choices=["median", "none"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-flops", type=float, default=0.5)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"$ python bench/bench_tune.py {' '.join(sys.argv[1:])}")
    if args.what == "front":
        front(args)
    else:
        stages(args)


if __name__ == "__main__":
    main()
