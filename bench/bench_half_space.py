"""DHSPG's half-space schedule with its two λ rules, beside the progressive schedule.

The bench_quality setup (``bench_quality.py``: tiny ResNet-20, digits, 30 epochs of 21 steps,
one-cycle lr to 0.1, SGD momentum 0.9, weight decay 5e-4, batch 64, the same initialisation
and batch order per seed), DHSPG at ``target_flops=0.5`` with the magnitude score, warm-up
1/10 of the steps, projection to 3/10 (``otonas search``'s fractions):

- ``progressive``: ``schedule="progressive", periods=5`` (bench_quality's ``otonas`` runs);
- ``half_space_fixed``: ``schedule="half_space", lambda_rule="fixed", lmbda=2.0`` (OTOv2's λ rule,
  with ``otonas search``'s ``lmbda``);
- ``half_space_schedule``: ``schedule="half_space", lambda_rule="schedule", lmbda=2.0`` (the default
  λ rule: λ_g lifted so that each group reaches the half-space boundary by ``end_step``).

Per run: the selected groups (G_r), how many of them were forced to zero at ``end_step``
(``metrics()["num_forced_groups"]``), how many were zero before the last projection step, the
norm of G_r at the last projection step as a share of its norm at the first (half-space runs:
how much a last-step projection or force removes), the built subnet's test accuracy and FLOPs
kept. Results
go to ``bench/results/half_space.json``; the summary (mean ± std over the seeds) is printed.

    python bench/bench_half_space.py                   # 5 methods × 5 seeds, ≈ 7 min at one thread
    python bench/bench_half_space.py --target 0.25 --out bench/results/half_space_0.25.json
    python bench/bench_half_space.py --supernet --out bench/results/half_space_supernet.json
    options: --seeds 0,1,2,3,4 --methods progressive,half_space_fixed,... --epochs N
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import otonas  # noqa: E402
from bench_quality import FULL, Context, Trainer, accuracy, make_net, supernet_h2spg  # noqa: E402
from otonas.optim import DHSPG, ForcedProjectionWarning, make_score  # noqa: E402

METHODS: dict[str, dict[str, Any]] = {
    "progressive": dict(schedule="progressive", periods=5),
    "half_space_fixed": dict(schedule="half_space", lambda_rule="fixed", lmbda=2.0),
    "half_space_schedule": dict(schedule="half_space", lambda_rule="schedule", lmbda=2.0),
    # the same rule at other base λ: how much the one default matters once the schedule sets the pace
    "half_space_schedule_lmbda_1e-3": dict(schedule="half_space", lambda_rule="schedule", lmbda=1e-3),
    "half_space_schedule_lmbda_10": dict(schedule="half_space", lambda_rule="schedule", lmbda=10.0),
}
# --supernet: H2SPG erasing half of the tiny DARTS supernet's operators (bench_quality's erase runs),
# in the half-space schedule at three base λ (and the progressive schedule beside them)
SUPERNET_METHODS: dict[str, dict[str, Any]] = {
    "progressive": dict(schedule="progressive", periods=5, lmbda=2.0),
    "half_space_schedule_lmbda_1e-3": dict(schedule="half_space", lambda_rule="schedule", lmbda=1e-3),
    "half_space_schedule_lmbda_2": dict(schedule="half_space", lambda_rule="schedule", lmbda=2.0),
    "half_space_schedule_lmbda_10": dict(schedule="half_space", lambda_rule="schedule", lmbda=10.0),
}
OUT = ROOT / "bench" / "results" / "half_space.json"


def run(ctx: Context, method: str, target: float, epochs: int, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    net = make_net()
    tr = Trainer(ctx.d, ctx.cfg, epochs, seed)
    space = otonas.analyze(net, (ctx.example,))
    o = ctx.cfg["otonas"]
    opt = DHSPG(space, lr=ctx.cfg["lr_max"], momentum=ctx.cfg["momentum"], weight_decay=ctx.cfg["weight_decay"],
                target_flops=target, warmup_steps=round(o["warmup"] * tr.total),
                end_step=round(o["projection_end"] * tr.total), score=make_score(o["score"]), **METHODS[method])
    start, end = opt.param_groups[0]["start_step"], opt.param_groups[0]["end_step"]
    seen: dict[str, float] = {}

    def watch() -> None:  # G_r's norm at the first and the last projection step, zero groups before the last
        t = opt.step_count  # steps taken
        if t == start + 1:
            seen["norm_first"] = float(opt.metrics()["redundant_norm"])
        elif t == end - 1:
            seen["zero_before_last"] = int(opt.metrics()["num_projected_groups"])
        elif t == end:
            seen["norm_last"] = float(opt.metrics()["redundant_norm"])

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ForcedProjectionWarning)
        tr.run(net, opt, epochs, after_step=watch)
    m = opt.metrics()
    sub = otonas.build(space)
    fk, _ = ctx.costs(sub)
    return {"method": method, "seed": seed, "epochs": epochs, "flops_target": target, "flops_kept": fk,
            "selected_groups": m["target_zero_groups"], "forced_groups": m["num_forced_groups"],
            "zero_before_last_step": seen.get("zero_before_last"),
            "norm_left_at_last_step": seen["norm_last"] / seen["norm_first"] if "norm_first" in seen else None,
            "accuracy": accuracy(sub, ctx.d), "seconds": round(time.perf_counter() - t0, 1)}


def run_supernet(ctx: Context, method: str, epochs: int, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ForcedProjectionWarning)
        _, space, opt = supernet_h2spg(ctx, ctx.cfg["darts"]["erase_budget"], epochs, seed, **SUPERNET_METHODS[method])
    m = opt.metrics()
    sub = otonas.build(space)
    fk, _ = ctx.costs(sub)
    return {"method": method, "seed": seed, "epochs": epochs, "flops_target": None, "flops_kept": fk,
            "selected_groups": m["num_accepted_erasing_groups"], "forced_groups": m["num_forced_groups"],
            "zero_before_last_step": None, "norm_left_at_last_step": None,
            "accuracy": accuracy(sub, ctx.d), "seconds": round(time.perf_counter() - t0, 1)}


def _mean(rs: list[dict[str, Any]], k: str, fmt: str) -> str:
    vs = [r[k] for r in rs if r.get(k) is not None and r[k] == r[k]]  # progressive runs have no λ norm (nan)
    return format(statistics.mean(vs), fmt) if vs else "–"


def summary(runs: list[dict[str, Any]]) -> str:
    lines = ["| method | runs | selected groups | forced groups (mean, range) | zero before the last projection step "
             "| G_r norm left at the last step | accuracy % (mean ± std) | paired − half_space_fixed | FLOPs kept |",
             "|---|---|---|---|---|---|---|---|---|"]
    fixed = {r["seed"]: r["accuracy"] for r in runs if r["method"] == "half_space_fixed"}
    for method in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == method]
        if not rs:
            continue
        forced = [r["forced_groups"] for r in rs]
        acc = [r["accuracy"] for r in rs]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        diff = [r["accuracy"] - fixed[r["seed"]] for r in rs if r["seed"] in fixed]
        paired = ("–" if method == "half_space_fixed" or not diff else
                  f"{statistics.mean(diff):+.2f} ± {statistics.stdev(diff) if len(diff) > 1 else 0.0:.2f}")
        lines.append(f"| {method} | {len(rs)} | {rs[0]['selected_groups']} | {statistics.mean(forced):.1f} "
                     f"({min(forced)}–{max(forced)}) | {_mean(rs, 'zero_before_last_step', '.1f')} | "
                     f"{_mean(rs, 'norm_left_at_last_step', '.2%')} | {statistics.mean(acc):.2f} ± {sd:.2f} | {paired} | "
                     f"{statistics.mean(r['flops_kept'] for r in rs):.1%} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--methods", help="comma-separated (default: all of the mode's)")
    ap.add_argument("--target", type=float, default=0.5, help="fraction of the FLOPs to keep")
    ap.add_argument("--epochs", type=int, help="default: bench_quality's (30 on digits, 12 for the supernet)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--summary-only", action="store_true", help="print the summary of --out, run nothing")
    ap.add_argument("--supernet", action="store_true",
                    help="H2SPG erasing half of the tiny DARTS supernet's operators instead (methods: "
                         + ", ".join(SUPERNET_METHODS) + "; --epochs defaults to bench_quality's 12)")
    args = ap.parse_args()
    if args.summary_only:
        print(summary(json.loads(Path(args.out).read_text())["runs"]))
        return
    torch.set_num_threads(args.threads)
    if args.supernet:
        from bench_quality import make_supernet
        ctx = Context("digits", FULL, make=make_supernet)
        table, default_epochs = SUPERNET_METHODS, FULL["darts"]["epochs"]
    else:
        ctx = Context("digits", FULL)
        table, default_epochs = METHODS, FULL["digits"]["epochs"]
    methods = args.methods.split(",") if args.methods else list(table)
    epochs = args.epochs if args.epochs is not None else default_epochs
    bad = [m for m in methods if m not in table]
    if bad:
        ap.error(f"unknown method {bad[0]!r}; expected one of {', '.join(table)}")
    runs: list[dict[str, Any]] = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for method in methods:
            r = (run_supernet(ctx, method, epochs, seed) if args.supernet
                 else run(ctx, method, args.target, epochs, seed))
            runs.append(r)
            print(f"{method:20s} seed {seed}  forced {r['forced_groups']:3d} of {r['selected_groups']}  "
                  f"acc {r['accuracy']:6.2f}%  FLOPs kept {r['flops_kept']:6.1%}  {r['seconds']:5.1f} s", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": {**FULL, "methods": table}, "runs": runs}, indent=1, default=str) + "\n")
    print(summary(runs))


if __name__ == "__main__":
    main()
