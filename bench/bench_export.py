"""Time ``otonas.export`` on ResNet-50 (or another torchvision model).

    python bench/bench_export.py [--model resnet50] [--size 224] [--fraction 0.3] [--repeat 3]

The model is analysed on a 2×3×SIZE×SIZE input, a random ``--fraction`` of its prunable groups
is zeroed and the subnet is built; then three ways of exporting are timed (median of
``--repeat`` runs, each into a fresh directory):

- ``export(subnet, check=False)``: generate model.py, architecture.json, write model.safetensors;
- ``export(subnet, example_inputs=x)``: the same, then load model.py back and compare its
  outputs with the subnet's (the default when inputs are known);
- ``export(space)``: from the SearchSpace, i.e. build + write + check, with sizes and FLOPs
  before and after in architecture.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import otonas  # noqa: E402
from otonas.models import import_torchvision  # noqa: E402
from otonas.testing import zero_groups_  # noqa: E402
from otonas.export import export  # noqa: E402


def _median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            fn(Path(out))
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--fraction", type=float, default=0.3)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()

    torch.manual_seed(0)
    model = import_torchvision().models.get_model(args.model, weights=None).eval()
    x = (torch.randn(2, 3, args.size, args.size),)
    t0 = time.perf_counter()
    space = otonas.analyze(model, x)
    t_analyze = time.perf_counter() - t0
    n = space.num_prunable_groups
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(0).choice(n, size=int(round(args.fraction * n)), replace=False)] = True
    zero_groups_(space, space.removable(mask))
    t0 = time.perf_counter()
    subnet = otonas.build(space)
    t_build = time.perf_counter() - t0

    rows = [
        ("export(subnet, check=False)", _median_seconds(lambda d: export(subnet, d, check=False), args.repeat)),
        ("export(subnet, example_inputs=x)", _median_seconds(lambda d: export(subnet, d, example_inputs=x),
                                                             args.repeat)),
        ("export(space)  [build + write + check]", _median_seconds(lambda d: export(space, d), args.repeat)),
    ]
    with tempfile.TemporaryDirectory() as out:
        result = export(space, out)
        lines = len(Path(result.model_py).read_text().splitlines())
        mbytes = Path(result.weights).stat().st_size / 2**20
    print(f"{args.model} on {args.size}x{args.size}, {args.fraction:.0%} of {n} groups zeroed; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"analyze {t_analyze:.2f} s, build {t_build:.2f} s; model.py {lines} lines, "
          f"model.safetensors {mbytes:.1f} MiB, {result.parameters:,} parameters")
    print("| export | seconds (median) |")
    print("|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
