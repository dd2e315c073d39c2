"""Analysis speed: ResNet-50 (capture included, CPU) and a 6.7 B-parameter decoder on
the meta device (time and peak RSS). Each case runs in a fresh process.

    python bench/bench_analysis.py            # both cases, a markdown table
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _case(name: str) -> dict:
    import torch

    sys.path.insert(0, HERE)
    import otonas

    torch.set_num_threads(2)
    if name == "resnet50":
        from otonas.models import import_torchvision

        model = import_torchvision().models.resnet50()
        x = (torch.randn(2, 3, 224, 224),)
        otonas.analyze(model, x)  # warm-up: first use of torch.export imports and caches a lot
    else:
        from models import Decoder

        with torch.device("meta"):
            model = Decoder()
        x = (torch.zeros(2, 128, dtype=torch.long, device="meta"),)
    t = time.perf_counter()
    space = otonas.analyze(model, x)
    seconds = time.perf_counter() - t
    return {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "seconds": round(seconds, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "prunable_groups": space.num_prunable_groups,
        "groups": space.num_groups,
    }


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--case":
        print(json.dumps(_case(sys.argv[2])))
        return
    print("| model | params | analysis (s) | peak RSS (GB) | prunable / groups |")
    print("|---|---:|---:|---:|---:|")
    for name in ("resnet50", "decoder-6.7B-meta"):
        out = subprocess.run([sys.executable, __file__, "--case", name], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {r['model']} | {r['params'] / 1e6:,.1f} M | {r['seconds']} | {r['peak_rss_gb']} | "
              f"{r['prunable_groups']:,} / {r['groups']:,} |")


if __name__ == "__main__":
    main()
