"""Step time of H2SPG against torch.optim.SGD(foreach=True): ``bench/bench_optim.py`` for the
hierarchical optimizer (same models, gradients and timing; groups from ``otonas.analyze``, which
H2SPG needs for its erasing groups).

    python bench/bench_optim_h2spg.py [--repeat 15] [--models resnet50,transformer] [--threads 1]

Phases: warm-up (base step), projection (warmup_steps ≤ step < end_step: scores of both levels,
λ step and half-space projection every step) and after the projection (zero groups held at zero).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_optim import make_model, time_h2spg  # noqa: E402


def bench(name: str, repeat: int, target: float, budget: float, weight_decay: float) -> list[str]:
    torch.manual_seed(0)
    model, inputs = make_model(name)
    return time_h2spg(name, model, inputs, repeat, budget, target, weight_decay)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50,transformer")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--target", type=float, default=0.3)
    ap.add_argument("--erase-budget", type=float, default=0.3)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, target_group_sparsity={args.target}, "
          f"erase_budget={args.erase_budget}, median of {args.repeat} steps")
    print("| model | params | groups | H2SPG phase | SGD step (ms) | H2SPG step (ms) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for row in bench(name.strip(), args.repeat, args.target, args.erase_budget, args.weight_decay):
            print(row, flush=True)


if __name__ == "__main__":
    main()
