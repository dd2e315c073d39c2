"""Every benchmark against the peers in one run; prints markdown sections for bench/README.md.

    python bench/run.py --quick     # a dozen models, one seed, one level: a quick look
    python bench/run.py             # the full run behind the tables in bench/README.md
    python bench/run.py --only coverage,quality   # some sections

Each section is one script run in its own process; its command, the machine load (``uptime``)
before it started and its wall time are printed beside its output, so that a figure can be
traced to the command that produced it. Torch-Pruning (``pip install -r bench/requirements.txt``)
is needed for coverage, speed and quality.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent

FULL = {
    "coverage": ["bench_peers.py", "coverage", "--out", "bench/peers.json"],
    "speed": ["bench_peers.py", "speed"],
    "analysis": ["bench_analysis.py"],
    "optimizer": ["bench_optim.py", "--threads", "1"],
    "latency": ["bench_latency.py"],
    "quality": ["bench_quality.py"],
    "export": ["bench_export.py"],
    "tune": ["bench_tune.py", "front", "--out", "{tmp}/tune", "--trials", "24", "--trial-epochs", "10"],
    "tune-stages": ["bench_tune.py", "stages", "--out", "{tmp}/tune", "--trials", "24",
                    "--trial-epochs", "10", "--seeds", "3"],
}
QUICK = {
    "coverage": ["bench_peers.py", "coverage", "--quick"],
    "speed": ["bench_peers.py", "speed", "--models", "resnet18,resnet50,mobilenet_v2", "--repeat", "3"],
    "analysis": ["bench_analysis.py"],
    "optimizer": ["bench_optim.py", "--threads", "1", "--repeat", "5"],
    "latency": ["bench_latency.py", "--models", "resnet50", "--levels", "0.5", "--batches", "1,8", "--repeat", "3"],
    "quality": ["bench_quality.py", "--quick"],
    "export": ["bench_export.py", "--repeat", "3"],
    "tune": ["bench_tune.py", "front", "--out", "{tmp}/tune", "--trials", "6", "--trial-epochs", "6"],
}
TITLES = {
    "coverage": "Coverage: torchvision classification zoo, otonas beside Torch-Pruning",
    "speed": "Speed of analysis: otonas.analyze against Torch-Pruning's DependencyGraph",
    "analysis": "Analysis of ResNet-50 and a 6.7 B decoder on the meta device (otonas alone)",
    "optimizer": "Optimizer overhead: DHSPG step against torch.optim.SGD",
    "latency": "Real speed-up: CPU latency of built subnets",
    "quality": "Quality: accuracy against FLOPs kept, otonas beside four baselines",
    "export": "Export of ResNet-50",
    "tune": "Tuning: the Pareto front of search_spaces:resnet20 on digits (global budget)",
    "tune-stages": "Tuning: per-stage against global budget at <= 50% FLOPs",
}


def _load() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated sections: " + ", ".join(FULL))
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per section")
    args = ap.parse_args()
    plan = QUICK if args.quick else FULL
    chosen = [s for s in (args.only.split(",") if args.only else plan) if s]
    import tempfile

    tmp = tempfile.mkdtemp(prefix="otonas-bench-")  # fresh studies for the tune sections of this run
    start = time.time()
    print(f"# otonas benchmarks ({'quick' if args.quick else 'full'} run), {time.strftime('%Y-%m-%d')}")
    print(f"\n{platform.platform()}, {os.cpu_count()} cores, torch {torch.__version__}, python {platform.python_version()}")
    for section in chosen:
        script, *rest = (a.replace("{tmp}", tmp) for a in plan[section])
        if not (HERE / script).exists():
            print(f"\n## {TITLES[section]}\n\n{script} does not exist here: pending.")
            continue
        cmd = [sys.executable, str(HERE / script), *rest]
        shown = "python bench/" + " ".join([script, *rest])
        load = _load()
        t = time.time()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=HERE.parent)
            body = p.stdout.strip() or f"(no output; exit {p.returncode}: {p.stderr.strip()[-300:]})"
        except subprocess.TimeoutExpired:
            body = f"(timed out after {args.timeout} s)"
        print(f"\n## {TITLES[section]}\n\n`{shown}` — {time.time() - t:.0f} s; load before: `{load}`\n")
        print(body, flush=True)
    print(f"\n---\n\n{len(chosen)} sections in {time.time() - start:.0f} s; load after: `{_load()}`")


if __name__ == "__main__":
    main()
