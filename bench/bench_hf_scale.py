"""Analysis of full-size HuggingFace configs on the meta device (no weights in memory):
seconds and peak resident memory, and what was found prunable.

    python bench/bench_hf_scale.py                 # Llama-2-7B and Mixtral-8x7B configs
    python bench/bench_hf_scale.py --only llama    # one of them

Each model runs in a fresh process, so the peak memory is its own. Targets (issue 18): < 30 s
and < 2 GB each; heads and MLP channels of every layer prunable.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time, torch, otonas
otonas.prepare_torchvision()
import transformers as T
which = sys.argv[1]
if which == "llama":
    config, cls = T.LlamaConfig(), T.LlamaForCausalLM  # the defaults are Llama-2-7B's sizes
    units = {"heads": 32, "mlp": 11008}
else:
    config = T.MixtralConfig()  # the defaults are Mixtral-8x7B's sizes
    cls = T.MixtralForCausalLM
    units = {"kv_heads": 8, "expert_mlp": 14336}
with torch.device("meta"):
    model = cls(config)
params = sum(p.numel() for p in model.parameters())
t = time.perf_counter()
space = otonas.analyze(model, (torch.randint(0, config.vocab_size, (2, 16), device="meta"),))
seconds = time.perf_counter() - t
found = {k: sum(1 for f in space.families if f.groups and f.num_channels == n) for k, n in units.items()}
print(json.dumps({"model": which, "params": params, "seconds_analyze": round(seconds, 1),
                  "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
                  "families_prunable": found, "layers": config.num_hidden_layers,
                  "prunable_groups": space.num_prunable_groups, "groups": space.num_groups}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["llama", "mixtral"])
    args = ap.parse_args()
    load = open("/proc/loadavg").read().split()[0] if sys.platform.startswith("linux") else "?"
    print(f"load average {load}", file=sys.stderr)
    for which in [args.only] if args.only else ["llama", "mixtral"]:
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", CHILD, which], capture_output=True, text=True)
        if done.returncode:
            print(json.dumps({"model": which, "error": done.stderr.strip().splitlines()[-1][:300]}))
        else:
            print(done.stdout.strip().splitlines()[-1])
        print(f"{which}: {time.perf_counter() - t:.1f}s wall with imports", file=sys.stderr)


if __name__ == "__main__":
    main()
