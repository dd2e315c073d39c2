"""Runs in a Python that has torch and safetensors but not otonas: loads each export's
model.py, runs it on saved inputs and compares with the saved outputs of the subnet.

    python plain_runner.py MANIFEST.json RESULTS.json

MANIFEST lists {"name", "dir", "cases": [{"inputs": file, "outputs": file}]}; inputs and
outputs are safetensors files with tensors "0", "1", ... (flattened pytrees).
"""

import importlib.util
import json
import sys
import traceback

import torch
from safetensors.torch import load_file
from torch.utils import _pytree as pytree


def rel_diff(ref, out):
    a, b = pytree.tree_leaves(ref), pytree.tree_leaves(out)
    if len(a) != len(b):
        return float("inf")
    worst = 0.0
    for x, y in zip(a, b):
        if not isinstance(y, torch.Tensor) or x.shape != y.shape:
            return float("inf")
        if not x.is_floating_point():
            worst = max(worst, float((x != y).any()))
        elif x.numel():
            scale = x.double().abs().max().item()
            diff = (x.double() - y.double()).abs().max().item()
            worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def main(manifest, results):
    torch.set_num_threads(1)
    out = {"otonas_importable": importlib.util.find_spec("otonas") is not None, "models": {}}
    for i, item in enumerate(json.load(open(manifest))):
        entry = {}
        try:
            spec = importlib.util.spec_from_file_location(f"exported_{i}", f"{item['dir']}/model.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            model = module.load().eval()
            diffs = []
            for case in item["cases"]:
                xs = load_file(case["inputs"])
                ref = load_file(case["outputs"])
                with torch.no_grad():
                    got = model(*[xs[str(k)] for k in range(len(xs))])
                diffs.append(rel_diff([ref[str(k)] for k in range(len(ref))], got))
            entry = {"ok": True, "diffs": diffs, "imports": sorted(m for m in sys.modules if m.split(".")[0] in
                                                                 ("otonas", "numpy", "search_spaces"))}
        except Exception:
            entry = {"ok": False, "error": traceback.format_exc()}
        out["models"][item["name"]] = entry
    json.dump(out, open(results, "w"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
