"""The progressive schedule's windows, chosen on a validation split: which warm-up, projection end
and number of periods give otonas its best accuracy, beside random pruning at initialisation
(bench_quality's strongest baseline), without looking at the test images.

Setup: bench_quality's Fashion-MNIST runs exactly (tiny ``search_spaces:resnet20``, the same 5,000
training images, 6 epochs, one-cycle lr to 0.1, SGD momentum 0.9, weight decay 5e-4, batch 64, the
same initialisation and batch order per seed), but every network is scored on a **validation
split**: 2,000 images (200 per class) of the 60k Fashion-MNIST training set that are not among the
5,000 training images (``numpy.random.default_rng(1)``), never on bench_quality's test images. A
schedule chosen here and then confirmed by ``bench_quality.py`` on the test split is not chosen on
the test split.

Configurations (``--configs``, each ``name=warmup:projection_end:periods`` as fractions of the
steps): by default today's ``otonas search`` default ``w10-e30-p5`` beside longer and shorter
windows and more periods. Every configuration runs DHSPG at ``target_flops`` with the
``NormAffineScore`` (``--mode prune``'s default); ``random_train`` is bench_quality's baseline.

    python bench/bench_schedule.py                    # default grid, 6 seeds, ≈ 27 min with 2 jobs
    python bench/bench_schedule.py --quick            # smoke test: 1 seed, 1 epoch, a small subset, into /tmp
    python bench/bench_schedule.py --configs w10-e30-p5=0.1:0.3:5,w20-e50-p10=0.2:0.5:10 --seeds 0,1,2

Results: ``bench/results/schedule.json`` (written after every run; a rerun resumes); the summary
(mean ± std, paired difference to random_train and to the default schedule) is printed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_quality as Q  # noqa: E402
import otonas  # noqa: E402
from otonas.optim import DHSPG, make_score  # noqa: E402

DEFAULT_CONFIGS = ("w10-e30-p5=0.1:0.3:5,w10-e30-p10=0.1:0.3:10,w10-e50-p5=0.1:0.5:5,w20-e50-p5=0.2:0.5:5,"
                   "w05-e20-p5=0.05:0.2:5,w20-e40-p5=0.2:0.4:5")
DEFAULT_OUT = Q.ROOT / "bench" / "results" / "schedule.json"
VAL = 2000
QUICK_VAL = 500


def load_val(cfg: dict[str, Any], n_val: int = VAL) -> Q.Data:
    """bench_quality's Fashion-MNIST training subset, with a validation split in place of the test split."""
    c = cfg["fashionmnist"]
    rng = np.random.default_rng(c["subset_seed"])
    xs = Q._idx(Q.FASHION_DIR / "train-images-idx3-ubyte.gz")
    ys = Q._idx(Q.FASHION_DIR / "train-labels-idx1-ubyte.gz")
    tr = Q._stratified(ys, c["train"], rng)  # the same draw as bench_quality.load (its first use of rng)
    rest = np.setdiff1d(np.arange(len(ys)), tr)
    va = rest[Q._stratified(ys[rest], n_val, np.random.default_rng(1))]
    assert not np.intersect1d(tr, va).size
    x_train = torch.tensor(xs[tr], dtype=torch.float32).unsqueeze(1) / 255.0
    x_val = torch.tensor(xs[va], dtype=torch.float32).unsqueeze(1) / 255.0
    y_train, y_val = torch.tensor(ys[tr], dtype=torch.int64), torch.tensor(ys[va], dtype=torch.int64)
    mean, std = x_train.mean(), x_train.std()
    return Q.Data((x_train - mean) / std, y_train, (x_val - mean) / std, y_val)


class ValContext(Q.Context):
    """bench_quality's per-data-set context over the validation split."""

    def __init__(self, cfg: dict[str, Any], n_val: int = VAL) -> None:  # noqa: D107 - Context's, with load_val
        self.name, self.cfg = "fashionmnist", cfg
        self.d = load_val(cfg, n_val)
        self.example = self.d.x_train[:2]
        dense = otonas.analyze(Q.make_net(), (self.example,)).costs()
        self.dense_flops, self.dense_params = dense.flops, dense.params
        self._quotas = {}
        self.flops_of = {}


def run_schedule(ctx: Q.Context, target: float, seed: int, warmup: float, end: float,
                 periods: int) -> tuple[torch.nn.Module, int]:
    """bench_quality's otonas run with this window."""
    epochs = ctx.cfg["fashionmnist"]["epochs"]
    torch.manual_seed(seed)
    net = Q.make_net()
    tr = Q.Trainer(ctx.d, ctx.cfg, epochs, seed)
    space = otonas.analyze(net, (ctx.example,))
    opt = DHSPG(space, lr=ctx.cfg["lr_max"], momentum=ctx.cfg["momentum"], weight_decay=ctx.cfg["weight_decay"],
                target_flops=target, warmup_steps=round(warmup * tr.total), end_step=round(end * tr.total),
                schedule="progressive", periods=periods, score=make_score(ctx.cfg["otonas"]["score"]))
    tr.run(net, opt, epochs)
    return otonas.build(space), int(opt.metrics()["num_forced_groups"])


_CTX: list[Q.Context] = []


def job(args: tuple[str, str, float, int, bool]) -> dict[str, Any]:
    """One run, in a worker process of one thread (``quick``: bench_quality's quick data and epochs)."""
    name, spec, target, seed, quick = args
    torch.set_num_threads(1)
    if not _CTX:
        _CTX.append(ValContext(Q.QUICK, QUICK_VAL) if quick else ValContext(Q.FULL))
    ctx = _CTX[0]
    t0 = time.perf_counter()
    if name == "random_train":
        net, forced = Q.run_random_train(ctx, target, ctx.cfg["fashionmnist"]["epochs"], seed)
    else:
        w, e, p = spec.split(":")
        net, forced = run_schedule(ctx, target, seed, float(w), float(e), int(p))
    fk, _ = ctx.costs(net)
    return {"config": name, "spec": spec, "target": target, "seed": seed, "val_accuracy": Q.accuracy(net, ctx.d),
            "flops_kept": fk, "forced_groups": forced, "seconds": round(time.perf_counter() - t0, 2)}


def summary(runs: list[dict[str, Any]]) -> str:
    by: dict[tuple[float, str], dict[int, float]] = {}
    for r in runs:
        by.setdefault((r["target"], r["config"]), {})[r["seed"]] = r["val_accuracy"]
    lines = ["| FLOPs target | config (warm-up:projection end:periods) | val accuracy (%) | − random_train | "
             "− default | seeds | forced |", "|---:|---|---:|---:|---:|---:|---:|"]

    def paired(a: dict[int, float], b: dict[int, float] | None) -> str:
        if not b:
            return "—"
        s = sorted(set(a) & set(b))
        d = [a[k] - b[k] for k in s]
        return Q._ms(d, "+.2f") if d else "—"

    specs = {r["config"]: r["spec"] for r in runs}
    forced = {}
    for r in runs:
        forced[(r["target"], r["config"])] = forced.get((r["target"], r["config"]), 0) + int(r["forced_groups"] or 0)
    for t in sorted({k[0] for k in by}, reverse=True):
        rt, base = by.get((t, "random_train")), by.get((t, "w10-e30-p5"))
        for (tt, c), accs in sorted(by.items()):
            if tt != t:
                continue
            v = list(accs.values())
            lines.append(f"| {t} | {c} ({specs[c]}) | {Q._ms(v)} | "
                         f"{paired(accs, rt) if c != 'random_train' else '—'} | "
                         f"{paired(accs, base) if c not in ('w10-e30-p5', 'random_train') else '—'} | {len(v)} | "
                         f"{forced[(t, c)]} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help="name=warmup:projection_end:periods, comma-separated")
    ap.add_argument("--targets", default="0.5,0.25")
    ap.add_argument("--seeds", default="0,1,2,3,4,5")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help=f"results JSON (default {DEFAULT_OUT.relative_to(Q.ROOT)}; "
                    "with --quick /tmp/schedule_quick.json)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1,000 training and 500 validation images, "
                    "1 epoch; by default seed 0 and the default window only")
    ap.add_argument("--summary-only", action="store_true")
    a = ap.parse_args()
    if a.quick and a.configs == DEFAULT_CONFIGS:
        a.configs = DEFAULT_CONFIGS.split(",")[0]
    if a.quick and a.seeds == ap.get_default("seeds"):
        a.seeds = "0"
    if a.out is None:
        a.out = Path("/tmp/schedule_quick.json") if a.quick else DEFAULT_OUT
    if not Q.FASHION_DIR.is_dir():
        raise SystemExit(f"Fashion-MNIST is not in {Q.FASHION_DIR}: apt-get install dataset-fashion-mnist")
    runs: list[dict[str, Any]] = json.loads(a.out.read_text())["runs"] if a.out.exists() else []
    if not a.summary_only:
        configs = [("random_train", "-")] + [tuple(c.split("=")) for c in a.configs.split(",")]
        done = {(r["config"], r["spec"], r["target"], r["seed"]) for r in runs}
        todo = [(n, s, float(t), int(seed), bool(a.quick)) for seed in a.seeds.split(",") for t in a.targets.split(",")
                for n, s in configs if (n, s, float(t), int(seed)) not in done]
        print(f"{len(todo)} runs, {a.jobs} jobs", flush=True)
        with mp.get_context("spawn").Pool(a.jobs) as pool:
            for r in pool.imap_unordered(job, todo):
                runs.append(r)
                a.out.parent.mkdir(parents=True, exist_ok=True)
                a.out.write_text(json.dumps({"val": QUICK_VAL if a.quick else VAL, "runs": runs}, indent=1))
                print(f"{r['config']:14s} target {r['target']:.2f} seed {r['seed']}  val {r['val_accuracy']:6.2f}%  "
                      f"FLOPs kept {r['flops_kept']:6.1%}  forced {r['forced_groups']}  {r['seconds']:.1f} s", flush=True)
    print(summary(runs))


if __name__ == "__main__":
    main()
