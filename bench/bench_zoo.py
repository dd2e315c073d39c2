"""`otonas verify` over the torchvision zoo (classification, segmentation, optical flow): does
it analyze, build and match; the share of parameters in prunable groups; what 30% of the
groups remove; the pin that keeps the most channel groups (the model's own inputs and outputs
aside) and why. One fresh process per model (memory stays bounded).

    python bench/bench_zoo.py [--out bench/zoo.json] [MODEL ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

TOO_LARGE = {"vit_h_14", "regnet_y_128gf"}  # beyond 24 GiB at verify's batch sizes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*")
    ap.add_argument("--out", default="bench/zoo.json")
    ap.add_argument("--timeout", type=int, default=900)
    args = ap.parse_args()
    if args.models:
        names = args.models
    else:
        from otonas.models import import_torchvision

        tv = import_torchvision()
        names = [n for module in (tv.models, tv.models.segmentation, tv.models.optical_flow)
                 for n in tv.models.list_models(module=module) if n not in TOO_LARGE]
    rows = []
    for name in names:
        t = time.time()
        try:
            p = subprocess.run([sys.executable, "-m", "otonas", "verify", f"torchvision:{name}", "--json"],
                               capture_output=True, text=True, timeout=args.timeout)
            r = json.loads(p.stdout) if p.stdout.strip() else {"passed": False, "message": p.stderr.strip()[-300:]}
        except subprocess.TimeoutExpired:
            r = {"passed": False, "message": "timeout"}
        r["model"], r["wall_seconds"] = name, round(time.time() - t, 1)
        rows.append(r)
        print(f"{name}: {'ok' if r.get('passed') else 'FAIL ' + r.get('message', '')}", file=sys.stderr, flush=True)
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    print("| model | matches | prunable share | params removed at 30% of groups | largest pin (channel groups) | "
          "max rel diff | analysis (s) |")
    print("|---|---|---:|---:|---|---:|---:|")
    for r in rows:
        if "params_before" in r:
            cut = 1 - r["params_after"] / r["params_before"]
            print(f"| {r['model']} | {'yes' if r['passed'] else 'NO'} | {r['prunable_param_share']:.1%} | {cut:.1%} | "
                  f"{_pin(r.get('largest_pin') or {})} | {r['max_rel_diff']:.1e} | {r['seconds_analyze']:.1f} |")
        else:
            print(f"| {r['model']} | NO ({r.get('message', '')[:60]}) | | | | | |")
    ok = sum(1 for r in rows if r.get("passed"))
    print(f"\n{ok} of {len(rows)} models analyze, build and match.")


def _pin(p: dict) -> str:
    if not p:
        return "none beside the model's inputs and outputs"
    where = p.get("module") or p["node"]
    return f"{p['reason']} at {where} ({p['groups']})".replace("|", "/")


if __name__ == "__main__":
    main()
